"""The example specs against the real micrographs in ../shared/data (skipped when absent).

Each spec is inspected once per session (the meltpool check reads all 231 images); the tests
then check counts, classes, encodings and splits against what each SOURCE.md documents.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from matseg.datasets.check import DatasetReport, Inspection, inspect_dataset, report
from matseg.datasets.masks import MaskInput, decode_mask
from matseg.datasets.readers import normalise, read_array
from matseg.datasets.spec import DatasetSpec, load_spec
from matseg.datasets.tiling import tile_windows

pytestmark = pytest.mark.realdata

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPEC_NAMES = sorted(p.stem.replace("-", "_") for p in EXAMPLES.glob("*.json"))

# name -> (pairs, unpaired images, classes present)
EXPECTED = {
    "nasa_super": (23, 0, ["matrix", "red_fine_gamma_prime", "blue_coarse_gamma_prime"]),
    "nrcan_shale_sem": (101, 0, ["background", "grain"]),
    "tbm_grain_256": (80, 0, ["grain", "grain_boundary"]),
    "nasa_meltpool": (231, 0, ["background", "melt_pool"]),
    "ampis_powder_particles": (5, 6, ["background", "particle"]),
    "ampis_powder_satellites": (10, 1, ["background", "satellite"]),
}
XCT_SLICES = {"NT_128x128x128": 128, "cement_128x128x128": 128, "fibers_150x150x150": 150}
MELTPOOL_SLICES = {
    "Slice-10Bottom",
    "Slice-2Bottom",
    "Slice-2Middle",
    "Slice-2Top",
    "Slice1Bottom",
    "Slice1Middle",
    "Slice1Top",
}


def _spec(shared_data: Path, name: str) -> DatasetSpec:
    """The example spec with its root pointed at the shared data folder actually found."""
    spec = load_spec(EXAMPLES / f"{name.replace('_', '-')}.json")
    root = shared_data / Path(spec.root).name
    return spec.model_copy(update={"root": str(root)})


Inspected = tuple[Inspection, DatasetReport]


@pytest.fixture(scope="session")
def example(shared_data: Path) -> Callable[[str], Inspected]:
    """``example(name)``: the inspection and report of one example spec, computed once."""
    done: dict[str, Inspected] = {}

    def get(name: str) -> Inspected:
        if name not in done:
            ins = inspect_dataset(_spec(shared_data, name))
            done[name] = (ins, report(ins))
        return done[name]

    return get


def _split_of(ins: Inspection) -> dict[str, str]:
    return {i.key: name for name, items in ins.split.splits.items() for i in items}


def test_every_example_is_covered() -> None:
    assert set(SPEC_NAMES) == set(EXPECTED) | {"xct_qim3d_unlabeled"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pairs_classes_and_usable(example: Callable[[str], Inspected], name: str) -> None:
    _, rep = example(name)
    pairs, unpaired, classes = EXPECTED[name]
    assert rep.n_pairs == pairs
    assert rep.n_items == pairs
    assert len(rep.unpaired_images) == unpaired
    assert rep.unpaired_masks == []
    assert rep.classes_present == classes
    assert rep.classes == classes
    assert rep.encoding_source == "spec"
    assert rep.usable, [p for p in rep.problems if p.level == "error"]
    assert not [p for p in rep.problems if p.level == "error"]
    assert abs(sum(rep.class_frequencies.values()) - 1.0) < 1e-9
    # Every item is in exactly one split and train / val / test are all populated.
    assert sum(v["items"] for v in rep.splits.values()) == pairs
    assert all(rep.splits[s]["items"] > 0 for s in ("train", "val", "test"))
    # Unpaired images are reported one by one, never skipped silently.
    for path in rep.unpaired_images:
        assert any(p.where == path and p.level == "warning" for p in rep.problems)


# --- nasa_super ---------------------------------------------------------------------------------


def test_nasa_super_uint8_and_uint16_images_decode(example: Callable[[str], Inspected]) -> None:
    ins, rep = example("nasa_super")
    assert rep.dtypes == {"uint8": 21, "uint16": 2}
    assert rep.sizes == {"512x512": 23}
    assert rep.channels == {"3": 23}
    wide = [s for s in ins.stats.values() if s.dtype == "uint16"]
    assert sorted(s.key for s in wide) == [
        "45kx_SE_15kV-etched_0",
        "SE_15kv_50kx_precip - untested-2_0",
    ]
    # 16-bit images use their range (values above 8 bits), and normalise to [0, 1] like 8-bit.
    assert all(s.raw_max > 255 for s in wide)
    for s in ins.stats.values():
        mean = s.norm_sum / (s.height * s.width)
        assert np.all((mean > 0.05) & (mean < 0.95)), s.key


def test_nasa_super_uint16_overlay_decodes_like_8bit(
    shared_data: Path, example: Callable[[str], Inspected]
) -> None:
    ins, _ = example("nasa_super")
    spec = ins.spec
    assert spec.encoding is not None
    for stem in ("45kx_SE_15kV-etched_0", "SE_15kv_50kx_precip - untested-2_0"):
        path = shared_data / "nasa_super" / "masks" / f"{stem}_mask.tif"
        raw = read_array(path)
        assert raw.dtype == np.uint16
        as_8bit = (raw // 257).astype(np.uint8)  # 65535 -> 255, what an 8-bit export holds
        wide = decode_mask(spec.encoding, MaskInput(str(path), raw=raw))
        narrow = decode_mask(spec.encoding, MaskInput(str(path), raw=as_8bit))
        np.testing.assert_array_equal(wide, narrow)
        assert len(np.unique(wide)) > 1, stem
    counts = ins.stats["45kx_SE_15kV-etched_0"].class_counts
    assert counts is not None and len(counts) > 1


def test_nasa_super_manifest_split(example: Callable[[str], Inspected]) -> None:
    ins, rep = example("nasa_super")
    sizes = {name: len(items) for name, items in ins.split.splits.items()}
    assert sizes == {"train": 10, "val": 4, "test": 4, "different_test": 5}
    shift = {i.key for i in ins.split.splits["different_test"]}
    non_spot = {k for k in ins.stats if not k.startswith("spot")}
    assert shift == non_spot
    assert len(non_spot) == 5
    assert ins.split.unassigned == []
    assert rep.splits["different_test"] == {"items": 5, "groups": 5, "tiles": 5}


# --- nrcan, tbm, meltpool -----------------------------------------------------------------------


def test_nrcan_all_foreground_masks_are_a_warning(example: Callable[[str], Inspected]) -> None:
    ins, rep = example("nrcan_shale_sem")
    only_fg = [k for k, s in ins.stats.items() if s.class_counts and set(s.class_counts) == {1}]
    assert len(only_fg) == 24
    assert rep.single_class_masks == 24
    warnings = [p for p in rep.problems if p.level == "warning" and "single class" in p.message]
    assert len(warnings) == 1
    assert "24 of 101" in warnings[0].message
    assert rep.usable


def test_tbm_group_split_keeps_each_micrograph_together(
    example: Callable[[str], Inspected],
) -> None:
    ins, rep = example("tbm_grain_256")
    pattern = re.compile(r"^((?:train|test)_\d+)-")
    split_of_group: dict[str, set[str]] = {}
    for name, items in ins.split.splits.items():
        for item in items:
            match = pattern.match(item.image.stem)
            assert match is not None, item.image.name
            assert item.group == match.group(1)
            split_of_group.setdefault(item.group, set()).add(name)
    assert len(split_of_group) > 3
    assert all(len(s) == 1 for s in split_of_group.values()), split_of_group
    # Groups of several tiles exist, so the check above is not vacuous.
    tiles_per_group = Counter(i.group for items in ins.split.splits.values() for i in items)
    assert max(tiles_per_group.values()) > 1
    assert not [p for p in rep.problems if "leakage risk" in p.message]


def test_meltpool_fraction_and_slice_groups(example: Callable[[str], Inspected]) -> None:
    ins, rep = example("nasa_meltpool")
    assert 0.03 < rep.class_frequencies["melt_pool"] < 0.15
    assert {i.group for i in ins.discovery.items} == MELTPOOL_SLICES
    groups_in = {}
    for name, items in ins.split.splits.items():
        for item in items:
            assert groups_in.setdefault(item.group, name) == name, item.group
    assert sum(v["groups"] for v in rep.splits.values()) == 7
    # Every image was rasterised with some melt pool (none left as pure background).
    assert all(s.class_counts and s.class_counts.get(1, 0) > 0 for s in ins.stats.values())


# --- xct volumes --------------------------------------------------------------------------------


def test_xct_volumes_slice_and_stay_in_one_split(example: Callable[[str], Inspected]) -> None:
    ins, rep = example("xct_qim3d_unlabeled")
    assert rep.n_items == 406
    assert rep.encoding_source == "none"
    assert rep.usable
    per_volume = Counter(i.container for i in ins.discovery.items)
    assert per_volume == XCT_SLICES
    for item in ins.discovery.items:
        assert item.group == item.container
        assert item.mask is None
        assert item.index is not None and 0 <= item.index < XCT_SLICES[item.container]
    split_of = _split_of(ins)
    volumes_in: dict[str, set[str]] = {}
    for item in ins.discovery.items:
        volumes_in.setdefault(item.container or "", set()).add(split_of[item.key])
    assert all(len(s) == 1 for s in volumes_in.values()), volumes_in
    assert rep.sizes == {"128x128": 256, "150x150": 150}


# --- the dataset the trainer sees ---------------------------------------------------------------


def test_micrograph_dataset_samples(example: Callable[[str], Inspected], tmp_path: Path) -> None:
    ins, _ = example("nasa_super")
    data = ins.dataset(tmp_path)
    assert len(data) == 23
    by_key = {}
    for i in range(len(data)):
        sample = data[i]
        assert sample.image.dtype == np.float32
        assert sample.image.shape == (3, 512, 512)
        assert sample.mask is not None
        assert sample.mask.dtype == np.int64
        assert sample.mask.shape == (512, 512)
        assert set(np.unique(sample.mask).tolist()) <= {0, 1, 2}
        assert sample.meta.modality == "SEM"
        by_key[sample.meta.key] = sample
    assert len(by_key) == 23
    # A 16-bit image ends on the same [0, 1] scale as the 8-bit ones.
    wide = by_key["45kx_SE_15kV-etched_0"].image
    assert wide.min() >= 0.0 and wide.max() <= 1.0 and wide.max() > 0.2
    assert Counter(s.meta.split for s in by_key.values()) == {
        "train": 10,
        "val": 4,
        "test": 4,
        "different_test": 5,
    }


def test_ampis_tiles_cover_every_pixel(example: Callable[[str], Inspected], tmp_path: Path) -> None:
    ins, _ = example("ampis_powder_particles")
    spec = ins.spec
    patch, overlap = spec.tiling.patch_size, spec.tiling.overlap
    assert (patch, overlap) == (256, 32)
    windows = tile_windows(1024, 1536, patch, overlap)
    assert len(windows) == 7 * 5
    data = ins.dataset(tmp_path)
    assert len(data) == 5 * len(windows)

    refs_by_item: dict[str, list] = {}
    for ref in data.refs:
        refs_by_item.setdefault(ref.item.key, []).append(ref)
    assert len(refs_by_item) == 5
    for key, refs in refs_by_item.items():
        covered = np.zeros((1024, 1536), dtype=bool)
        for ref in refs:
            w = ref.window
            assert (w.h, w.w) == (patch, patch)
            assert 0 <= w.y <= 1024 - patch and 0 <= w.x <= 1536 - patch
            covered[w.y : w.y + w.h, w.x : w.x + w.w] = True
        assert covered.all(), key
        assert len({r.split for r in refs}) == 1  # tiles of one micrograph share a split

    # Served tiles are the windows of the full, normalised image and its mask.
    first = data.refs[0].item
    image, mask = data.cache.get(first)
    full = normalise(np.asarray(image), spec.normalise)
    for index in (0, len(windows) - 1):
        sample = data[index]
        y, x, h, w = sample.meta.window
        assert sample.image.dtype == np.float32 and sample.image.shape[1:] == (256, 256)
        assert sample.mask is not None and sample.mask.dtype == np.int64
        np.testing.assert_allclose(sample.image, full[:, y : y + h, x : x + w], atol=1e-6)
        np.testing.assert_array_equal(sample.mask, np.asarray(mask)[y : y + h, x : x + w])
    assert (y, x) == (1024 - 256, 1536 - 256)  # the last window sits flush with the corner
