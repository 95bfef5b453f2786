"""Sliding-window prediction: tiles cover the image, blending is exact where it must be."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from matseg.datasets.tiling import tile_starts
from matseg.deploy.sliding import gaussian_importance, predict_tiled, tile_grid
from matseg.errors import InputError
from matseg.training import predict_probabilities


class PixelModel(torch.nn.Module):
    """A 1x1 convolution: exactly translation-equivariant, so tiling must not change anything."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 5


@pytest.mark.parametrize(
    "length,patch,step", [(100, 32, 24), (32, 32, 24), (20, 32, 24), (97, 32, 32)]
)
def test_tile_starts_cover_and_end_flush(length: int, patch: int, step: int) -> None:
    starts = tile_starts(length, patch, step)
    covered = np.zeros(max(length, patch), bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered[:length].all()
    assert starts[0] == 0 and starts[-1] == max(0, length - patch)
    assert all(b - a <= step for a, b in itertools.pairwise(starts))


def test_gaussian_importance_is_centred_and_positive() -> None:
    w = gaussian_importance(64)
    assert w.shape == (64, 64) and w.min() > 0 and w.max() == pytest.approx(1.0)
    assert w[31, 31] > w[16, 31] > w[16, 16] > w[0, 0] == pytest.approx(1e-3)
    np.testing.assert_allclose(w, w.T)


@pytest.mark.parametrize("shape", [(3, 150, 97), (3, 64, 64), (3, 40, 50)])
def test_tiled_equals_whole_image_for_a_translation_equivariant_model(shape) -> None:
    model = PixelModel().eval()
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    prob_out = np.zeros((4, *shape[1:]), np.float32)
    mask = predict_tiled(model, image, 4, patch=64, overlap=0.25, batch_size=3,
                         out_probabilities=prob_out)  # fmt: skip
    with torch.no_grad():
        whole = predict_probabilities(model, torch.from_numpy(image)[None], False)[0].numpy()
    np.testing.assert_allclose(prob_out, whole, atol=1e-5)
    np.testing.assert_array_equal(mask, whole.argmax(0))


def test_bands_are_written_into_a_memory_mapped_output(tmp_path) -> None:
    model = PixelModel(1, 2).eval()
    image = np.random.default_rng(2).normal(size=(1, 300, 200)).astype(np.float32)
    out = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.uint8, shape=(300, 200))
    calls: list[tuple[int, int]] = []
    predict_tiled(
        model, image, 2, 64, 0.5, 4, out_mask=out, progress=lambda d, t: calls.append((d, t))
    )
    out.flush()
    with torch.no_grad():
        whole = predict_probabilities(model, torch.from_numpy(image)[None], False)[0].numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), whole.argmax(0))
    assert calls[-1][0] == calls[-1][1] == len(tile_grid(300, 200, 64, 0.5))


def test_bad_arguments_are_one_line_errors() -> None:
    model = PixelModel().eval()
    with pytest.raises(InputError, match="multiple of 32"):
        predict_tiled(model, np.zeros((3, 64, 64), np.float32), 4, patch=50)
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        predict_tiled(model, np.zeros((64, 64), np.float32), 4, patch=64)
    with pytest.raises(InputError, match="overlap"):
        tile_grid(100, 100, 64, 1.0)


def test_class_argmax_matches_numpy_including_ties() -> None:
    from matseg.deploy.sliding import _argmax_classes

    scores = np.random.default_rng(3).integers(0, 3, size=(4, 20, 30)).astype(np.float32)
    np.testing.assert_array_equal(_argmax_classes(scores), scores.argmax(axis=0))


@pytest.mark.parametrize(
    "dtype,policy,shape",
    [
        ("u1", "dtype", (1, 1024, 160)),
        (">u2", "minmax", (1, 150, 260)),
        ("f4", "zscore", (3, 90, 90)),
    ],
)
def test_raw_tiles_normalised_on_the_way_in_give_the_same_prediction(
    dtype: str, policy: str, shape: tuple[int, int, int]
) -> None:
    """Normalising and matching channels tile by tile (the image kept in its own dtype, even
    big-endian) gives exactly what normalising the whole image first gives, in less memory."""
    import tracemalloc

    from matseg.datasets.readers import match_channels, normalisation, normalise

    rng = np.random.default_rng(3)
    raw = (rng.random(shape) * 250).astype(dtype)
    model = PixelModel(3, 2).eval()
    whole = match_channels(normalise(raw, policy), 3)
    p1 = np.zeros((2, *shape[1:]), np.float32)
    before_mask = predict_tiled(model, whole, 2, 64, 0.25, 4, out_probabilities=p1)
    norm = normalisation(raw, policy)
    p2, mask = np.zeros_like(p1), np.zeros(shape[1:], np.uint8)
    tracemalloc.start()
    predict_tiled(
        model, raw, 2, 64, 0.25, 4, out_mask=mask, out_probabilities=p2,
        prepare=lambda tiles: match_channels(norm.apply(tiles), 3, axis=1),
    )  # fmt: skip
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(mask, before_mask)
    np.testing.assert_array_equal(p2, p1)
    if shape[1] > 512:  # a tall grey image for an RGB model: far less than its float32 RGB copy
        assert peak < whole.nbytes / 2


class TileDependentModel(torch.nn.Module):
    """Output that depends on where a pixel sits in its tile: blending weights then matter, so
    only the right weights, each tile counted once, give the reference."""

    def __init__(self, patch: int, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(1, classes, 1)
        self.ramp = torch.nn.Parameter(torch.randn(1, classes, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.ramp


def _reference_blend(model, image, patch, overlap) -> np.ndarray:
    """Every tile's weighted probabilities summed over the whole image, then divided."""
    _, h, w = image.shape
    weight = gaussian_importance(patch)
    acc = np.zeros((3, h, w)), np.zeros((h, w))
    for y, x in tile_grid(h, w, patch, overlap):
        tile = torch.from_numpy(image[None, :, y : y + patch, x : x + patch].copy())
        with torch.no_grad():
            prob = predict_probabilities(model, tile, False)[0].numpy()
        acc[0][:, y : y + patch, x : x + patch] += prob * weight
        acc[1][y : y + patch, x : x + patch] += weight
    return acc[0] / acc[1]


@pytest.mark.parametrize("group_px,batch", [(10_000, 3), (100, 2), (32, 1), (64, 3)])
def test_column_groups_and_carries_blend_every_tile_once(monkeypatch, group_px, batch) -> None:
    """Bands cut into column groups (the carries to the next group and, through a scratch
    file, to the next band) give the whole-image blend of every tile."""
    import matseg.deploy.sliding as sliding

    monkeypatch.setattr(sliding, "GROUP_PX", group_px)
    model = TileDependentModel(64).eval()
    image = np.random.default_rng(5).normal(size=(1, 230, 301)).astype(np.float32)
    columns = sorted({x for _, x in tile_grid(230, 301, 64, 0.3)})
    step = columns[1] - columns[0]
    groups = sliding.column_groups(columns, step, batch)
    assert (len(groups) == 1) == (group_px == 10_000)
    prob = np.zeros((3, 230, 301), np.float32)
    mask = predict_tiled(model, image, 3, 64, 0.3, batch, out_probabilities=prob)
    expected = _reference_blend(model, image, 64, 0.3)
    np.testing.assert_allclose(prob, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mask, expected.argmax(0))
