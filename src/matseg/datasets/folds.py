"""Cross-validation folds of a development set: group-aware, balanced, repeatable.

The development set is the spec's train + val images (the test split and shift sets never enter
a fold). ``cross_validation_folds`` cuts it into ``folds`` parts, ``repeats`` times with
reshuffled folds; each fold holds out one part and trains on the rest, and early stopping and
checkpoint choice use an *inner validation* part carved from the training parts, never the
held-out one. Groups (the slices of a volume, the frames of a sequence, the tiles of one
micrograph) stay whole, in one part.

The parts are balanced by image count and by class presence: scikit-learn's
``StratifiedGroupKFold`` assigns whole groups so that each part's label distribution follows
the whole set's, where a group's label is the rarest class present in it (a crack that appears
in three micrographs then lands in three parts' held-out images, not in one). A class present
in fewer groups than there are folds cannot reach every part; :func:`fold_notes` says which.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from matseg.errors import SpecError


class Grouped(Protocol):
    """What a fold needs of an image: its unique key and the group it belongs to."""

    @property
    def key(self) -> str: ...

    @property
    def group(self) -> str: ...


@dataclass(frozen=True)
class Fold:
    """One fold of one repeat: image keys to train on, to stop early on, and to hold out."""

    repeat: int
    index: int
    train: tuple[str, ...]
    inner_val: tuple[str, ...]
    held_out: tuple[str, ...]

    @property
    def name(self) -> str:
        """``r0f3``: repeat 0, fold 3 (what job labels and folders show)."""
        return f"r{self.repeat}f{self.index}"


def _group_labels(
    groups: list[str], group_of: dict[str, str], presence: Mapping[str, frozenset[int]] | None
) -> dict[str, int]:
    """Each group's stratification label: the rarest class present in it (-1: no information).

    Rarity is the number of groups a class is present in; ties go to the higher class id (a
    foreground class rather than the background).
    """
    if not presence:
        return dict.fromkeys(groups, -1)
    present: dict[str, set[int]] = {g: set() for g in groups}
    for key, classes in presence.items():
        if key in group_of:
            present[group_of[key]].update(int(c) for c in classes)
    frequency = Counter(c for classes in present.values() for c in classes)
    return {
        g: min(classes, key=lambda c: (frequency[c], -c)) if classes else -1
        for g, classes in present.items()
    }


def _split_groups(
    keys: list[str],
    group_of: dict[str, str],
    labels: dict[str, int],
    n_splits: int,
    seed: int,
) -> list[list[str]]:
    """``keys`` cut into ``n_splits`` parts of whole groups, stratified by the group labels."""
    y = np.array([labels[group_of[k]] for k in keys])
    if (np.unique(y, return_counts=True)[1] < n_splits).all():
        y = np.zeros(len(keys), dtype=int)  # every class too rare to stratify: by size alone
    groups = np.array([group_of[k] for k in keys])
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class in y has only n members": a rare class cannot reach every
        # part; fold_notes reports it in the user's words instead.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = [test for _, test in splitter.split(np.zeros(len(keys)), y, groups)]
    return [[keys[i] for i in sorted(part)] for part in parts]


def cross_validation_folds(
    items: Sequence[Grouped],
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    presence: Mapping[str, frozenset[int]] | None = None,
    inner_val: float = 0.15,
) -> list[Fold]:
    """The folds of every repeat, in order (repeat 0 fold 0, repeat 0 fold 1, ...).

    ``presence``: image key -> the class ids present in its mask (for class-balanced parts);
    ``inner_val``: the share of each fold's training images kept for early stopping (whole
    groups, at least one group). Deterministic in ``seed``; repeat ``r`` reshuffles with
    ``seed + r``.
    """
    keys = sorted(item.key for item in items)
    group_of = {item.key: item.group for item in items}
    if len(keys) != len(group_of):
        raise SpecError("cross-validation", "unique image keys", "repeated keys")
    groups = sorted(set(group_of.values()))
    if folds < 2:
        raise SpecError("evaluation.folds", "at least 2", str(folds))
    if repeats < 1:
        raise SpecError("evaluation.repeats", "at least 1", str(repeats))
    if not 0 < inner_val < 1:
        raise SpecError("inner validation share", "a share in (0, 1)", str(inner_val))
    # each fold needs a held-out group, and its training part one group to train on and one to
    # stop early on
    if len(groups) < folds + 1:
        raise SpecError(
            "evaluation.folds",
            f"at least {folds + 1} groups (images, volumes or sequences) in train + val "
            f"for {folds} folds",
            f"{len(groups)} groups in {len(keys)} images",
            "use fewer folds or the holdout protocol",
        )
    labels = _group_labels(groups, group_of, presence)
    out: list[Fold] = []
    for repeat in range(repeats):
        parts = _split_groups(keys, group_of, labels, folds, seed + repeat)
        for index, held in enumerate(parts):
            rest = [k for k in keys if k not in set(held)]
            rest_groups = {group_of[k] for k in rest}
            if len(rest_groups) < 2:
                raise SpecError(
                    "evaluation.folds",
                    "two groups or more outside each held-out part (to train and to stop early)",
                    f"{len(rest_groups)} in fold {index} of {folds} ({len(groups)} groups)",
                    "use fewer folds or the holdout protocol",
                )
            n_inner = min(max(2, round(1 / inner_val)), len(rest_groups))
            inner = _split_groups(rest, group_of, labels, n_inner, seed + 1000 * (repeat + 1))[0]
            inner_set = set(inner)
            out.append(
                Fold(
                    repeat=repeat,
                    index=index,
                    train=tuple(k for k in rest if k not in inner_set),
                    inner_val=tuple(inner),
                    held_out=tuple(held),
                )
            )
    return out


def fold_notes(
    items: Sequence[Grouped], folds: list[Fold], presence: Mapping[str, frozenset[int]] | None
) -> list[str]:
    """One line per class that some fold's held-out part lacks (it is rarer than the folds)."""
    if not presence or not folds:
        return []
    notes = []
    classes = sorted({c for present in presence.values() for c in present})
    n_folds = 1 + max(f.index for f in folds)
    for c in classes:
        missing = [f.name for f in folds if not any(c in presence.get(k, ()) for k in f.held_out)]
        if missing:
            groups = {item.group for item in items if c in presence.get(item.key, ())}
            notes.append(
                f"class {c} is present in {len(groups)} group(s), fewer than {n_folds} folds: "
                f"{len(missing)} held-out part(s) lack it ({', '.join(missing[:4])}"
                f"{', ...' if len(missing) > 4 else ''})"
            )
    return notes
