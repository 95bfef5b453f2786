"""Splits keep micrographs, volumes and sequences whole, follow manifests, and flag leaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from matseg.datasets.check import inspect_dataset, report
from matseg.datasets.discover import Item, discover
from matseg.datasets.spec import spec_from_dict
from matseg.datasets.splits import assign_splits, random_group_split
from matseg.datasets.tiling import tile_windows


def _items(groups: dict[str, int]) -> list[Item]:
    return [
        Item(Path(f"{g}_{i}.png"), None, f"{g}_{i}", g) for g, n in groups.items() for i in range(n)
    ]


def test_random_split_is_group_aware_seeded_and_close_to_ratios() -> None:
    items = _items({f"m{i:02d}": 1 + i % 4 for i in range(40)})
    a = random_group_split(items, (0.7, 0.15, 0.15), seed=3)
    b = random_group_split(items, (0.7, 0.15, 0.15), seed=3)
    c = random_group_split(items, (0.7, 0.15, 0.15), seed=4)
    assert {k: [i.key for i in v] for k, v in a.items()} == {
        k: [i.key for i in v] for k, v in b.items()
    }
    assert {k: [i.key for i in v] for k, v in a.items()} != {
        k: [i.key for i in v] for k, v in c.items()
    }
    owner: dict[str, str] = {}
    for split, members in a.items():
        for item in members:
            assert owner.setdefault(item.group, split) == split
    n = len(items)
    assert abs(len(a["train"]) / n - 0.7) < 0.08
    assert all(len(a[s]) > 0 for s in ("train", "val", "test"))


def test_every_split_gets_a_group_when_groups_are_few() -> None:
    split = random_group_split(_items({"a": 5, "b": 1, "c": 1}), (0.7, 0.15, 0.15), seed=0)
    assert all(len(v) == 1 or len(v) == 5 for v in split.values())
    assert all(split[s] for s in ("train", "val", "test"))


def _pairs(root: Path, stems: list[str], folder: str = "") -> None:
    rng = np.random.default_rng(len(stems))
    for stem in stems:
        for sub, value in (("images", None), ("masks", 1)):
            d = root / sub / folder
            d.mkdir(parents=True, exist_ok=True)
            arr = (
                rng.integers(0, 255, (16, 16), dtype=np.uint8)
                if value is None
                else np.zeros((16, 16), np.uint8)
            )
            if value is not None:
                arr[:8] = 1
            Image.fromarray(arr).save(d / f"{stem}.png")


def test_manifest_records_with_preferred_prefix(tmp_path: Path) -> None:
    _pairs(tmp_path, ["a", "b", "c", "d"])
    manifest = [
        {"name": "a.png", "splits": ["S1/train", "S2/train"]},
        {"name": "b.png", "splits": ["S1/val"]},
        {"name": "c.png", "splits": ["S1/test"]},
        {"name": "d.png", "splits": ["S2/different_test"]},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    spec = spec_from_dict(
        {
            "name": "m",
            "split": {
                "method": "manifest",
                "manifest": "manifest.json",
                "split_field": "splits",
                "prefer": ["S1/", "S2/"],
            },
        },
        base_dir=tmp_path,
    )
    result = assign_splits(discover(spec).items, spec)
    got = {k: [i.key for i in v] for k, v in result.splits.items()}
    assert got == {"train": ["a"], "val": ["b"], "test": ["c"], "different_test": ["d"]}


def test_manifest_dict_and_csv(tmp_path: Path) -> None:
    _pairs(tmp_path, ["a", "b", "c"])
    (tmp_path / "m.json").write_text(json.dumps({"training": ["a.png"], "validation": ["b"]}))
    spec = spec_from_dict(
        {"name": "m", "split": {"method": "manifest", "manifest": "m.json"}}, base_dir=tmp_path
    )
    result = assign_splits(discover(spec).items, spec)
    assert [i.key for i in result.splits["train"]] == ["a"]
    assert [i.key for i in result.splits["val"]] == ["b"]
    assert [i.key for i in result.unassigned] == ["c"]  # reported, not silently dropped
    assert any("no split" in p.message for p in result.problems)
    (tmp_path / "m.csv").write_text("name,split\na.png,test\nb.png,train\nc.png,val\n")
    spec = spec_from_dict(
        {"name": "m", "split": {"method": "manifest", "manifest": "m.csv"}}, base_dir=tmp_path
    )
    result = assign_splits(discover(spec).items, spec)
    assert {k: [i.key for i in v] for k, v in result.splits.items()} == {
        "train": ["b"],
        "val": ["c"],
        "test": ["a"],
    }


def test_folder_split(tmp_path: Path) -> None:
    _pairs(tmp_path, ["a"], "train")
    _pairs(tmp_path, ["b"], "validation")
    _pairs(tmp_path, ["c"], "test")
    spec = spec_from_dict({"name": "f", "split": {"method": "folders"}}, base_dir=tmp_path)
    result = assign_splits(discover(spec).items, spec)
    assert {k: [i.key for i in v] for k, v in result.splits.items()} == {
        "train": ["train/a"],
        "val": ["validation/b"],
        "test": ["test/c"],
    }


def test_leakage_check_flags_exact_and_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    base = np.kron(rng.integers(0, 255, (8, 8)), np.ones((8, 8))).astype(np.uint8)
    images = {f"u{i}": rng.integers(0, 255, (64, 64), dtype=np.uint8) for i in range(6)}
    images["dup_a"] = base
    images["dup_b"] = base.copy()
    brighter = np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8)
    images["near_c"] = brighter
    for stem, arr in images.items():
        Image.fromarray(arr).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray((arr > 128).astype(np.uint8)).save(tmp_path / "masks" / f"{stem}.png")
    manifest = {
        "train": ["dup_a", "u0", "u1", "u2"],
        "val": ["dup_b", "u3"],
        "test": ["near_c", "u4", "u5"],
    }
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    spec = spec_from_dict(
        {
            "name": "leak",
            "encoding": {"type": "index"},
            "split": {"method": "manifest", "manifest": "m.json"},
        },
        base_dir=tmp_path,
    )
    rep = report(inspect_dataset(spec))
    pairs = {frozenset((d["a"], d["b"])): d for d in rep.leaks}
    assert pairs[frozenset(("dup_a", "dup_b"))]["exact"] is True
    assert pairs[frozenset(("dup_a", "near_c"))]["exact"] is False
    assert not any(d["a"].startswith("u") or d["b"].startswith("u") for d in rep.leaks)


@pytest.mark.parametrize(
    "h,w,patch,overlap", [(1024, 1536, 256, 32), (100, 70, 64, 0), (30, 40, 64, 8)]
)
def test_tiles_cover_every_pixel(h: int, w: int, patch: int, overlap: int) -> None:
    wins = tile_windows(h, w, patch, overlap)
    cover = np.zeros((h, w), dtype=int)
    for win in wins:
        assert win.h == patch and win.w == patch
        cover[win.y : win.y + win.h, win.x : win.x + win.w] += 1
    assert cover.min() >= 1
    if h >= patch and w >= patch:
        assert all(win.y + patch <= h and win.x + patch <= w for win in wins)


def test_volume_slices_and_frame_sequences_stay_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "vols").mkdir()
    for v in range(4):
        tifffile.imwrite(
            tmp_path / "vols" / f"vol{v}.tif", rng.integers(0, 255, (6, 12, 10), dtype=np.uint8)
        )
    spec = spec_from_dict(
        {"name": "xct", "images": "vols", "masks": None, "reader": {"kind": "volume", "axis": 2}},
        base_dir=tmp_path,
    )
    ins = inspect_dataset(spec)
    assert len(ins.stats) == 4 * 10  # slices along x
    assert {s.height for s in ins.stats.values()} == {6}
    for items in ins.split.splits.values():
        for item in items:
            assert item.container == item.group == item.image.stem
    owners = {i.container: s for s, items in ins.split.splits.items() for i in items}
    assert len(owners) == 4
    for seq in ("run1", "run2", "run3"):
        d = tmp_path / "frames" / seq
        d.mkdir(parents=True)
        for f in range(5):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                d / f"frame_{f:03d}.png"
            )
    spec = spec_from_dict(
        {"name": "hs", "images": "frames", "masks": None, "reader": {"kind": "frames"}},
        base_dir=tmp_path,
    )
    ins = inspect_dataset(spec)
    assert len(ins.stats) == 15
    for split, items in ins.split.splits.items():
        assert len({i.container for i in items}) == len(items) // 5 or not items, split


def test_multichannel_stack_with_named_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        stack = np.stack(
            [rng.normal(0, 50, (16, 16)), rng.normal(0, 2, (16, 16)), rng.normal(1, 0.1, (16, 16))]
        )
        np.save(tmp_path / "images" / f"afm{i}.npy", stack.astype(np.float32))
        Image.fromarray((stack[0] > 0).astype(np.uint8)).save(tmp_path / "masks" / f"afm{i}.png")
    spec = spec_from_dict(
        {
            "name": "afm",
            "modality": "AFM",
            "encoding": {"type": "index"},
            "classes": ["a", "b"],
            "reader": {"kind": "stack", "channels": ["height", "phase", "amplitude"]},
        },
        base_dir=tmp_path,
    )
    ins = inspect_dataset(spec)
    rep = report(ins)
    assert rep.usable and rep.channels == {"3": 3}

    sample = ins.dataset()[0]
    assert sample.image.shape == (3, 16, 16)
    np.testing.assert_allclose(sample.image.reshape(3, -1).std(axis=1), 1, atol=1e-4)  # per channel
    bad = spec.model_copy(
        update={"reader": spec.reader.model_copy(update={"channels": ["height"]})}
    )
    assert not report(inspect_dataset(bad)).usable
