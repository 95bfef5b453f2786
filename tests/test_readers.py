"""Readers: every image flavour real micrographs come in reads to the right array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from matseg.datasets.readers import (
    detect_info_band,
    normalise,
    read_array,
    to_channels_first,
)
from matseg.errors import DataError

RNG = np.random.default_rng(0)
ODD_NAME = "spot #1 (copy) 45kx"


@pytest.mark.parametrize(
    "ext,mode",
    [
        (e, m)
        for e in (".png", ".bmp", ".tif")
        for m in ("L", "RGB", "RGBA")
        if (e, m) != (".bmp", "RGBA")
    ],
)
def test_lossless_8bit_round_trip(tmp_path: Path, ext: str, mode: str) -> None:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    shape = (17, 23) if channels == 1 else (17, 23, channels)
    data = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / f"{ODD_NAME}{ext}"
    if ext == ".tif":
        tifffile.imwrite(path, data)
    else:
        Image.fromarray(data, mode=mode).save(path)
    out = read_array(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, data)
    chw = to_channels_first(out, str(path))
    assert chw.shape == (min(channels, 3), 17, 23)  # alpha dropped


def test_jpeg_reads_close_to_original(tmp_path: Path) -> None:
    data = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    path = tmp_path / "grad.jpg"
    Image.fromarray(data).save(path, quality=95)
    out = read_array(path)
    assert out.shape == (32, 32)
    assert np.abs(out.astype(int) - data.astype(int)).max() < 12


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_keeps_full_range(tmp_path: Path, ext: str) -> None:
    data = RNG.integers(0, 65536, size=(9, 11), dtype=np.uint16)
    path = tmp_path / f"img16{ext}"
    if ext == ".tif":
        tifffile.imwrite(path, data)
    else:
        Image.fromarray(data).save(path)
    out = read_array(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, data)
    norm = normalise(to_channels_first(out, "x"), "dtype")
    assert norm.dtype == np.float32
    np.testing.assert_allclose(norm[0], data / 65535.0, rtol=1e-6)


def test_float_tiff_and_npy_stack(tmp_path: Path) -> None:
    scale = np.array([10.0, 1.0, 0.1], dtype=np.float32)[:, None, None]
    stack = (RNG.normal(size=(3, 8, 8)) * scale).astype(np.float32)
    tifffile.imwrite(tmp_path / "afm.tif", stack, photometric="minisblack")
    np.save(tmp_path / "afm.npy", stack)
    for name in ("afm.tif", "afm.npy"):
        arr = read_array(tmp_path / name)
        np.testing.assert_array_equal(arr, stack)
        chw = to_channels_first(arr, name, stack=True)
        z = normalise(chw, "auto")  # float data -> per-channel z-score
        np.testing.assert_allclose(z.reshape(3, -1).mean(axis=1), 0, atol=1e-5)
        np.testing.assert_allclose(z.reshape(3, -1).std(axis=1), 1, atol=1e-4)


def test_npy_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"evil\.npy"):
        read_array(path)


def test_normalise_policies() -> None:
    img = np.array([[[0, 50, 100, 200]]], dtype=np.uint8)
    np.testing.assert_allclose(normalise(img, "dtype"), img / 255.0, rtol=1e-6)
    np.testing.assert_allclose(normalise(img, "minmax"), img / 200.0, rtol=1e-6)
    p = normalise(img, "percentile")
    assert p.min() == 0.0 and p.max() == 1.0


def test_info_band_detected_and_absent() -> None:
    micrograph = RNG.integers(40, 200, size=(100, 80), dtype=np.uint8)
    with_band = micrograph.copy()
    with_band[-20:] = 0
    with_band[-12:-8, 5:30] = 255  # text in the data bar
    assert detect_info_band(with_band[None]) == 20
    assert detect_info_band(micrograph[None]) == 0
