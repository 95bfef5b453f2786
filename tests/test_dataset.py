"""The dataset the trainer sees: crop, resize policy, tiles, cache and normalisation agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matseg.datasets.check import inspect_dataset, report
from matseg.datasets.dataset import collate_samples
from matseg.datasets.spec import spec_from_dict


def _sem_with_info_band(root: Path, n: int = 3) -> None:
    """SEM-like images 80x64 with a 16-row black data bar carrying white 'text' at the bottom."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(60, 200, (80, 64), dtype=np.uint8)
        img[-16:] = 0
        img[-10:-6, 4:40] = 255
        mask = np.zeros((80, 64), dtype=np.uint8)
        mask[10:30, 10:30] = 1
        Image.fromarray(img).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")


@pytest.mark.parametrize("crop", [{"bottom": 16}, {"auto_info_band": True}])
def test_info_band_is_cut_from_image_and_mask(tmp_path: Path, crop: dict) -> None:
    _sem_with_info_band(tmp_path)
    spec = spec_from_dict(
        {"name": "sem", "encoding": {"type": "index"}, "classes": ["matrix", "pore"], "crop": crop},
        base_dir=tmp_path,
    )
    ins = inspect_dataset(spec)
    assert report(ins).sizes == {"64x64": 3}
    sample = ins.dataset()[0]
    assert sample.image.shape == (1, 64, 64) and sample.mask is not None
    assert sample.mask.shape == (64, 64) and sample.mask[10:30, 10:30].all()
    assert sample.image.min() > 0.2  # nothing of the black bar left


@pytest.mark.parametrize(
    "tiling,size",
    [({"resize": "scale", "scale": 0.5}, (40, 32)), ({"resize": "fit", "fit_size": 40}, (40, 32))],
)
def test_resize_policy_keeps_masks_categorical(tmp_path: Path, tiling: dict, size: tuple) -> None:
    _sem_with_info_band(tmp_path)
    spec = spec_from_dict(
        {"name": "sem", "encoding": {"type": "index"}, "classes": ["a", "b"], "tiling": tiling},
        base_dir=tmp_path,
    )
    ins = inspect_dataset(spec)
    sample = ins.dataset()[0]
    assert sample.image.shape[1:] == size
    assert sample.mask is not None and set(np.unique(sample.mask)) == {0, 1}
    assert sample.mask[5:15, 5:15].all()  # the square, halved


def test_tiles_cache_and_collate(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    img = rng.integers(0, 65535, (100, 140), dtype=np.uint16)
    Image.fromarray(img).save(tmp_path / "images" / "big.png")
    Image.fromarray((img > 30000).astype(np.uint8)).save(tmp_path / "masks" / "big.png")
    spec = spec_from_dict(
        {"name": "big", "encoding": {"type": "index"}, "tiling": {"patch_size": 64, "overlap": 16}},
        base_dir=tmp_path,
    )
    ins = inspect_dataset(spec)
    cold = ins.dataset()
    cached = ins.dataset(tmp_path / "cache")
    assert len(cold) == len(cached) == 2 * 3  # rows: 0, 36; cols: 0, 48, 76
    for i in range(len(cold)):
        a, b = cold[i], cached[i]
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        y, x, h, w = a.meta.window
        np.testing.assert_allclose(a.image[0], img[y : y + h, x : x + w] / 65535.0, rtol=1e-6)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # one image + one mask, decoded once
    batch = collate_samples([cached[i] for i in range(4)])
    assert tuple(batch["image"].shape) == (4, 1, 64, 64)
    assert str(batch["mask"].dtype) == "torch.int64"


def test_labelled_volumes_slice_with_their_labels(tmp_path: Path) -> None:
    """XCT-style volumes with label volumes: slices along y pair with the same label slice."""
    import tifffile

    from matseg.datasets.synthetic import write_synthetic_dataset

    write_synthetic_dataset(
        tmp_path, kind="pores", n_images=4, size=32, n_volumes=2, volume_size=24
    )
    spec = spec_from_dict(
        {
            "name": "vols",
            "images": "volumes",
            "masks": "volume_labels",
            "encoding": {"type": "index"},
            "classes": ["solid", "pore"],
            "modality": "XCT",
            "reader": {"kind": "volume", "axis": 1, "slice_step": 2},
        },
        base_dir=tmp_path,
    )
    ins = inspect_dataset(spec)
    assert report(ins).usable and len(ins.stats) == 2 * 12
    data = ins.dataset()
    labels = {p.stem: tifffile.imread(p) for p in (tmp_path / "volume_labels").glob("*.tif")}
    for i in range(len(data)):
        sample = data[i]
        assert sample.meta.container in labels and sample.meta.index is not None
        expected = labels[sample.meta.container][:, sample.meta.index, :]
        np.testing.assert_array_equal(sample.mask, expected)


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    from matseg.atomic import write_json, write_npy

    write_json(tmp_path / "a" / "x.json", {"k": [1, 2]})
    write_npy(tmp_path / "a" / "y.npy", np.arange(6).reshape(2, 3))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "y.npy"]
    assert np.load(tmp_path / "a" / "y.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
