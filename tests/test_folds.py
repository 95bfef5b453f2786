"""Cross-validation folds: disjoint, covering, group-aware, class-balanced, deterministic."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from matseg.datasets.folds import cross_validation_folds, fold_notes
from matseg.errors import SpecError


@dataclass(frozen=True)
class _Image:
    key: str
    group: str


def _development_set(n_groups: int = 12, sizes: tuple[int, ...] = (1, 1, 2, 3)) -> list[_Image]:
    """Groups of uneven size (single micrographs, and volumes of 2-3 slices)."""
    images = []
    for g in range(n_groups):
        for s in range(sizes[g % len(sizes)]):
            images.append(_Image(f"g{g:02d}#z{s}", f"g{g:02d}"))
    return images


def _check_partition(images: list[_Image], folds, k: int, repeats: int) -> None:
    keys = {i.key for i in images}
    group_of = {i.key: i.group for i in images}
    expected = [(r, i) for r in range(repeats) for i in range(k)]
    assert [(f.repeat, f.index) for f in folds] == expected
    for r in range(repeats):
        held = [f.held_out for f in folds if f.repeat == r]
        flat = [key for part in held for key in part]
        assert sorted(flat) == sorted(keys)  # covering, each image held out exactly once
        for part in held:  # a group lies in one part only
            others = {group_of[k] for p in held if p is not part for k in p}
            assert not {group_of[k] for k in part} & others
    for f in folds:
        train, inner, held = set(f.train), set(f.inner_val), set(f.held_out)
        assert train and inner and held
        assert not train & inner and not train & held and not inner & held
        assert train | inner | held == keys
        # groups are whole in each of the three parts
        for a, b in ((train, inner), (train, held), (inner, held)):
            assert not {group_of[k] for k in a} & {group_of[k] for k in b}


@pytest.mark.parametrize(("k", "repeats"), [(5, 1), (3, 2), (2, 3)])
def test_folds_are_disjoint_covering_and_group_aware(k: int, repeats: int) -> None:
    images = _development_set()
    folds = cross_validation_folds(images, folds=k, repeats=repeats, seed=4)
    _check_partition(images, folds, k, repeats)


def test_folds_are_deterministic_and_repeats_reshuffle() -> None:
    images = _development_set()
    a = cross_validation_folds(images, folds=4, repeats=2, seed=1)
    assert a == cross_validation_folds(list(reversed(images)), folds=4, repeats=2, seed=1)
    assert {f.held_out for f in a[:4]} != {f.held_out for f in a[4:]}  # reshuffled
    other = cross_validation_folds(images, folds=4, repeats=2, seed=2)
    assert [f.held_out for f in other] != [f.held_out for f in a]
    assert a[5].name == "r1f1"


def test_parts_are_balanced_by_image_count() -> None:
    images = _development_set(n_groups=20, sizes=(1,))  # 20 single micrographs, 5 folds
    sizes = [len(f.held_out) for f in cross_validation_folds(images, folds=5, seed=0)]
    assert sizes == [4, 4, 4, 4, 4]
    images = _development_set(n_groups=24)  # 42 images in groups of 1-3
    sizes = [len(f.held_out) for f in cross_validation_folds(images, folds=5, seed=0)]
    assert max(sizes) - min(sizes) <= 3  # at most one largest group apart


def test_a_rare_class_reaches_every_held_out_part() -> None:
    """A class present in exactly k micrographs of 25 lands in every fold's held-out part."""
    images = _development_set(n_groups=25, sizes=(1,))
    rare = {"g03#z0", "g07#z0", "g11#z0", "g18#z0", "g22#z0"}
    presence = {i.key: frozenset({0, 1, 2} if i.key in rare else {0, 1}) for i in images}
    for seed in range(5):
        folds = cross_validation_folds(images, folds=5, seed=seed, presence=presence)
        assert all(len(rare & set(f.held_out)) == 1 for f in folds)
        assert fold_notes(images, folds, presence) == []
    # unstratified, the same seeds leave some part without it
    plain = [cross_validation_folds(images, folds=5, seed=s) for s in range(5)]
    assert any(any(not rare & set(f.held_out) for f in folds) for folds in plain)


def test_a_class_rarer_than_the_folds_is_named() -> None:
    images = _development_set(n_groups=10, sizes=(1,))
    presence = {i.key: frozenset({0, 1} if i.key in ("g02#z0", "g05#z0") else {0}) for i in images}
    folds = cross_validation_folds(images, folds=5, seed=0, presence=presence)
    (note,) = fold_notes(images, folds, presence)
    assert note.startswith("class 1 is present in 2 group(s), fewer than 5 folds: 3 held-out")


def test_too_few_groups_is_one_line() -> None:
    images = _development_set(n_groups=4, sizes=(3,))  # 12 images, but 4 volumes
    with pytest.raises(SpecError, match=r"at least 6 groups .* for 5 folds.*found 4 groups in 12"):
        cross_validation_folds(images, folds=5)
    with pytest.raises(SpecError, match=r"evaluation\.folds"):
        cross_validation_folds(images, folds=1)
    with pytest.raises(SpecError, match="repeated keys"):
        cross_validation_folds([_Image("a", "a"), _Image("a", "b"), _Image("c", "c")], folds=2)
