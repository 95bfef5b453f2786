"""Synthetic covariate shifts of graded strength for normalised micrographs.

Why: QC must be judged against inputs that are atypical in known ways and by known amounts, so
that "the detector catches a blur of sigma 2 px but not of 1 px" is a measured statement. Each
shift mimics an acquisition problem (defocus, a noisy detector, wrong brightness/contrast
settings, a coarser pixel size, charging/drift) and its strength maps to one physical parameter.

Images are float32 arrays ``(C, H, W)`` already normalised (roughly zero mean, unit variance per
channel; no [0, 1] range is assumed). Every shift works channel by channel over ``(H, W)``,
keeps the shape and dtype, and is registered in ``SHIFTS`` as
``f(image, strength, rng) -> image``. Strength is a float in [0, 1]: 0 returns an exact copy of
the image, and the effect (mean absolute difference to the original) grows monotonically with
strength. ``SHIFT_PARAMETERS`` is the table of strength -> parameter mappings (``s`` is the
strength, ``std``/``mean``/``min``/``max`` are per-channel statistics of the input):

==========  ================================================================================
blur        Gaussian blur, sigma = 4 * s px
noise       additive Gaussian noise, std = s * std (s = 1: signal-to-noise ratio 1)
contrast    scale about the mean by factor 1 - 0.75 * s (s = 1 keeps 25 % of the contrast)
gamma       on (x - min) / (max - min): u ** (1 + s), mapped back to [min, max]
resolution  downsample by factor 1 + 7 * s (pixel size x 8 at s = 1), upsample back (bilinear)
drift       add s * std * (1.5 * ramp + 0.25): ramp 0 -> 1 along a random in-plane direction
==========  ================================================================================

A constant channel (std 0, or max == min) has no scale to be relative to: ``noise``, ``gamma``
and ``drift`` leave it unchanged. ``apply_shift`` draws every random choice from
``numpy.random.default_rng(seed)``, so the same seed gives the same array, and the same random
draws are scaled by the strength (the noise field and the drift direction do not change from one
strength to the next). A newcomer adds a shift by writing one function, adding it to ``SHIFTS``
and its mapping to ``SHIFT_PARAMETERS`` (a test checks both agree).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.transform import resize

from matseg.errors import InputError

_WHERE = "matseg.qc.shifts"

Image = NDArray[np.floating[Any]]
Shift = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

#: The default graded levels at which a QC detector is evaluated.
STRENGTHS: tuple[float, ...] = (0.25, 0.5, 1.0)

#: Shift name -> how strength ``s`` in [0, 1] maps to its physical parameter (see module doc).
SHIFT_PARAMETERS: dict[str, str] = {
    "blur": "Gaussian blur over (H, W), sigma = 4 * s px",
    "noise": "additive Gaussian noise, std = s * (channel std)",
    "contrast": "x -> mean + (1 - 0.75 * s) * (x - mean), per channel",
    "gamma": "u = (x - min) / (max - min) -> u ** (1 + s), mapped back to [min, max]",
    "resolution": "downsample (H, W) by factor 1 + 7 * s (anti-aliased), upsample back bilinear",
    "drift": "x + s * std * (1.5 * ramp + 0.25), ramp 0 -> 1 along a random direction",
}


def blur(image: Image, strength: float, rng: np.random.Generator) -> Image:
    """Defocus / a larger probe: Gaussian blur of sigma ``4 * strength`` px over (H, W)."""
    sigma = 4.0 * strength
    x = image.astype(np.float64)
    out = ndimage.gaussian_filter(x, sigma=(0.0, sigma, sigma), mode="reflect")
    return out.astype(image.dtype)


def noise(image: Image, strength: float, rng: np.random.Generator) -> Image:
    """A noisier detector: additive Gaussian noise of std ``strength`` x the channel's std."""
    x = image.astype(np.float64)
    std = x.std(axis=(1, 2), keepdims=True)
    out = x + strength * std * rng.standard_normal(x.shape)
    return out.astype(image.dtype)


def contrast(image: Image, strength: float, rng: np.random.Generator) -> Image:
    """Lower contrast (detector gain): scale about the channel mean by ``1 - 0.75 * strength``."""
    x = image.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    out = mean + (1.0 - 0.75 * strength) * (x - mean)
    return out.astype(image.dtype)


def gamma(image: Image, strength: float, rng: np.random.Generator) -> Image:
    """A non-linear detector response: gamma ``1 + strength`` on the min-max range.

    Each channel is rescaled to ``u`` in [0, 1] by its own min and max, raised to the power
    gamma (midtones darken), and mapped back to the original [min, max], so the range is kept
    and only the tone curve changes.
    """
    x = image.astype(np.float64)
    lo = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - lo
    u = np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0)
    out = np.where(span > 0, lo + span * u ** (1.0 + strength), x)
    return out.astype(image.dtype)


def resolution(image: Image, strength: float, rng: np.random.Generator) -> Image:
    """A coarser pixel size: downsample (H, W) by ``1 + 7 * strength``, then upsample back.

    Downsampling is anti-aliased (``skimage.transform.resize``), upsampling bilinear; the
    coarse grid has ``max(1, round(H / factor))`` x ``max(1, round(W / factor))`` pixels.
    """
    factor = 1.0 + 7.0 * strength
    c, h, w = image.shape
    coarse_shape = (c, max(1, round(h / factor)), max(1, round(w / factor)))
    x = image.astype(np.float64)
    coarse = resize(x, coarse_shape, order=1, anti_aliasing=True, preserve_range=True)
    out = resize(coarse, (c, h, w), order=1, anti_aliasing=False, preserve_range=True)
    return np.asarray(out).astype(image.dtype)


def drift(image: Image, strength: float, rng: np.random.Generator) -> Image:
    """SEM charging / beam drift: a smooth brightness ramp plus a small uniform brightening.

    Adds ``strength * std * (1.5 * ramp + 0.25)`` per channel, where ``ramp`` rises linearly
    from 0 to 1 across the image along a direction drawn from ``rng`` (the same for every
    channel). Nothing moves: the shift is in intensity only.
    """
    x = image.astype(np.float64)
    _, h, w = x.shape
    angle = rng.uniform(0.0, 2.0 * math.pi)
    yy, xx = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    along = math.cos(angle) * xx + math.sin(angle) * yy
    extent = along.max() - along.min()
    ramp = (along - along.min()) / extent if extent > 0 else np.zeros_like(along)
    std = x.std(axis=(1, 2), keepdims=True)
    out = x + strength * std * (1.5 * ramp[None] + 0.25)
    return out.astype(image.dtype)


#: The registry: name -> ``f(image (C, H, W), strength in [0, 1], rng) -> shifted image``.
SHIFTS: dict[str, Shift] = {
    "blur": blur,
    "noise": noise,
    "contrast": contrast,
    "gamma": gamma,
    "resolution": resolution,
    "drift": drift,
}


def _check_image(image: Any, where: str) -> Image:
    expected = "a (C, H, W) floating-point array of finite values"
    if not isinstance(image, np.ndarray):
        raise InputError(f"{where}: image: expected {expected}, found {type(image).__name__}")
    if image.ndim != 3 or image.dtype.kind != "f" or min(image.shape) < 1:
        raise InputError(f"{where}: image: expected {expected}, found {image.dtype} {image.shape}")
    if not np.isfinite(image).all():
        raise InputError(f"{where}: image: expected {expected}, found non-finite values")
    return image


def _check_strength(strength: Any, where: str) -> float:
    ok = isinstance(strength, int | float | np.integer | np.floating)
    if isinstance(strength, bool) or not ok or not 0.0 <= float(strength) <= 1.0:
        raise InputError(f"{where}: strength: expected a number in [0, 1], found {strength!r}")
    return float(strength)


def apply_shift(image: Image, name: str, strength: float, seed: int = 0) -> Image:
    """The image (C, H, W) shifted by the registered shift ``name`` at ``strength`` in [0, 1].

    Deterministic: the randomness comes from ``numpy.random.default_rng(seed)``. Strength 0
    returns an exact copy. The input is never modified.
    """
    where = f"{_WHERE}.apply_shift"
    if name not in SHIFTS:
        raise InputError(f"{where}: name: expected one of {sorted(SHIFTS)}, found {name!r}")
    img = _check_image(image, where)
    s = _check_strength(strength, where)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise InputError(f"{where}: seed: expected an int, found {seed!r}")
    if s == 0:
        return img.copy()
    return SHIFTS[name](img, s, np.random.default_rng(int(seed)))
