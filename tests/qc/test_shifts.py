"""Synthetic shifts: identity at 0, determinism, monotonic effect, shapes, dtype, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from matseg.datasets.synthetic import ImagingConditions, generate, simulate_imaging
from matseg.qc.shifts import SHIFT_PARAMETERS, SHIFTS, STRENGTHS, apply_shift

GRADES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def _normalise(channel: np.ndarray) -> np.ndarray:
    return (channel - channel.mean()) / channel.std()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A textured 2-channel (C, H, W) float32 micrograph, normalised per channel."""
    grains, _ = generate("grains", 64, seed=1)
    pores, _ = generate("pores", 64, seed=2)
    channels = [
        _normalise(simulate_imaging(c, ImagingConditions(), seed=3)) for c in (grains, pores)
    ]
    return np.stack(channels).astype(np.float32)


def test_registry_and_parameter_table_agree() -> None:
    assert set(SHIFTS) == set(SHIFT_PARAMETERS)
    assert {"blur", "noise", "contrast", "gamma", "resolution", "drift"} <= set(SHIFTS)
    assert STRENGTHS == (0.25, 0.5, 1.0)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_strength_zero_is_identity(image: np.ndarray, name: str) -> None:
    out = apply_shift(image, name, 0.0, seed=5)
    assert out is not image
    np.testing.assert_array_equal(out, image)
    assert out.dtype == image.dtype


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_deterministic_per_seed_and_input_untouched(image: np.ndarray, name: str) -> None:
    before = image.copy()
    a = apply_shift(image, name, 0.5, seed=7)
    b = apply_shift(image, name, 0.5, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(image, before)


def test_seed_changes_the_random_shifts(image: np.ndarray) -> None:
    for name in ("noise", "drift"):
        a = apply_shift(image, name, 0.5, seed=7)
        b = apply_shift(image, name, 0.5, seed=8)
        assert not np.array_equal(a, b), name


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_effect_grows_with_strength(image: np.ndarray, name: str) -> None:
    mad = [float(np.abs(apply_shift(image, name, s, seed=3) - image).mean()) for s in GRADES]
    assert mad[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(mad)), (name, mad)
    assert mad[-1] > 0.1, (name, mad)  # a clear shift at full strength on unit-variance data


@pytest.mark.parametrize("name", sorted(SHIFTS))
@pytest.mark.parametrize("shape", [(1, 32, 48), (3, 17, 9), (2, 1, 5)])
def test_shape_and_dtype_preserved(name: str, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        img = rng.standard_normal(shape).astype(dtype)
        out = apply_shift(img, name, 1.0, seed=0)
        assert out.shape == shape
        assert out.dtype == dtype
        assert np.isfinite(out).all()


def test_channels_are_shifted_independently(image: np.ndarray) -> None:
    """Per-channel statistics: shifting a stack equals shifting each channel (non-random shifts)."""
    for name in ("blur", "contrast", "gamma", "resolution"):
        stacked = apply_shift(image, name, 0.5, seed=0)
        for c in range(image.shape[0]):
            single = apply_shift(image[c : c + 1], name, 0.5, seed=0)
            np.testing.assert_allclose(stacked[c : c + 1], single, rtol=1e-6, atol=1e-6)


def test_documented_parameters(image: np.ndarray) -> None:
    x = image.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    out = apply_shift(image, "contrast", 1.0)
    np.testing.assert_allclose(out, mean + 0.25 * (x - mean), rtol=1e-5, atol=1e-5)
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    out = apply_shift(image, "gamma", 1.0)
    np.testing.assert_allclose(out, lo + (hi - lo) * ((x - lo) / (hi - lo)) ** 2, atol=1e-5)
    assert np.allclose(out.min(axis=(1, 2)), lo.ravel()) and np.allclose(
        out.max(axis=(1, 2)), hi.ravel()
    )
    noisy = apply_shift(image, "noise", 1.0, seed=4).astype(np.float64) - x
    assert np.allclose(noisy.std(axis=(1, 2)), x.std(axis=(1, 2)), rtol=0.05)


def test_constant_channel_stays_finite_and_unchanged_where_documented() -> None:
    img = np.zeros((2, 8, 8), np.float32)
    img[1] = np.arange(64, dtype=np.float32).reshape(8, 8)
    for name in ("noise", "gamma", "drift"):
        out = apply_shift(img, name, 1.0, seed=0)
        np.testing.assert_array_equal(out[0], img[0])
        assert not np.array_equal(out[1], img[1])


def test_errors(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"name: expected one of \['blur', .*found 'fog'"):
        apply_shift(image, "fog", 0.5)
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="strength: expected a number in \\[0, 1\\]"):
            apply_shift(image, "blur", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"image: expected a \(C, H, W\).*\(64, 64\)"):
        apply_shift(image[0], "blur", 0.5)
    with pytest.raises(ValueError, match=r"image: expected .* found int64"):
        apply_shift(np.zeros((1, 4, 4), np.int64), "blur", 0.5)
    nan = image.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        apply_shift(nan, "blur", 0.5)
    with pytest.raises(ValueError, match="seed: expected an int"):
        apply_shift(image, "noise", 0.5, seed=1.5)  # type: ignore[arg-type]
