"""Synthetic microstructures with exact labels, simulated imaging and a dataset writer.

Why: every part of matseg (readers, splits, training, QC, explanations) needs data whose ground
truth is known exactly, that costs nothing to make, and that can be shifted on purpose (noisier,
blurrier, drifting, charging) to test out-of-distribution detection. Built on scipy and
scikit-image only; porespy stays an optional extra (see docs/porespy.md).

Structures (``STRUCTURES``; 2D for an int or (H, W) size, 3D for a (Z, Y, X) size):

- ``pores``: porous solid from Gaussian-filtered noise thresholded at a porosity (porespy's
  ``blobs`` idea); classes solid / pore; pores dark.
- ``particles``: overlapping ellipses (ellipsoids in 3D) of random size and orientation on a
  background (a Boolean model); classes background / particle; particles bright.
- ``grains``: Voronoi grains, one grey level per grain (channelling contrast); the mask is the
  grain boundaries as 1-pixel lines; classes grain / boundary.
- ``phases``: two-phase superalloy-like microstructure: rounded cuboidal large precipitates on a
  jittered lattice (secondary gamma-prime) and small round ones in the matrix channels (tertiary
  gamma-prime); classes matrix / small_precipitate / large_precipitate.

Each generator returns ``(image, mask)``: a clean float32 image in [0, 1] with constant grey
levels per phase or object, and int64 class ids. ``simulate_imaging`` then adds the artefacts of
a real instrument. Every random choice comes from ``np.random.default_rng(seed)``; the same
seed gives the same arrays, and the writer the same bytes.

A newcomer adds a structure by writing one function ``f(size, seed, *, knobs...) -> (image,
mask)``, adding it to ``STRUCTURES`` and its class names to ``CLASSES`` (a test checks both).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from matseg.atomic import write_bytes
from matseg.errors import SpecError

Seed = int | np.random.SeedSequence | np.random.Generator
Size = int | tuple[int, ...]
FloatArray = NDArray[np.float32]
LabelArray = NDArray[np.int64]
Structure = tuple[FloatArray, LabelArray]
Side = Literal["left", "right", "top", "bottom"]
NoiseModel = Literal["poisson", "gaussian"]

#: Regex on a file stem whose first group names the micrograph a tile was cut from.
GROUP_PATTERN = r"^(.*)_tile\d+$"
#: The writer cuts each micrograph into TILE_GRID x TILE_GRID tiles.
TILE_GRID = 2
MIN_SIZE = 8

_WHERE = "matseg.datasets.synthetic"


# --- validation helpers -------------------------------------------------------------------------


def _shape(size: Size, where: str, ndim: int | None = None) -> tuple[int, ...]:
    """Normalise a size: an int is a square (or a cube when ``ndim`` is 3), a tuple is the shape."""
    want = ndim or 2
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        shape = (int(size),) * want
    elif isinstance(size, tuple | list) and all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) for s in size
    ):
        shape = tuple(int(s) for s in size)
    else:
        shape = ()
    allowed = (ndim,) if ndim else (2, 3)
    if len(shape) not in allowed or min(shape) < MIN_SIZE:
        dims = " or ".join(f"{d} ints" for d in allowed)
        raise SpecError(
            f"{where}: size",
            f"an int or {dims}, each >= {MIN_SIZE}",
            repr(size),
            "e.g. size=128 or size=(96, 128)",
        )
    return shape


def _check(
    where: str, name: str, value: float, lo: float, hi: float, *, closed: bool = True
) -> None:
    """Raise a SpecError unless ``lo <= value <= hi`` (``lo < value < hi`` when not ``closed``)."""
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if ok:
        ok = lo <= value <= hi if closed else lo < value < hi
    if not ok:
        brackets = "[]" if closed else "()"
        raise SpecError(
            f"{where}: {name}",
            f"a number in {brackets[0]}{lo}, {hi}{brackets[1]}",
            repr(value),
            f"pass a valid {name}",
        )


def _check_radius_range(where: str, name: str, value: Any) -> tuple[float, float]:
    """A (low, high) radius pair in pixels with 0.5 <= low <= high."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo, hi = math.nan, math.nan
    if not (0.5 <= lo <= hi < 1e4):
        raise SpecError(
            f"{where}: {name}",
            "two radii in pixels (low, high) with 0.5 <= low <= high",
            repr(value),
            f"e.g. {name}=(4, 10)",
        )
    return lo, hi


# --- shared geometry ----------------------------------------------------------------------------


def _ball_volume(ndim: int) -> float:
    """Volume of the unit ball in ``ndim`` dimensions (pi in 2D, 4/3 pi in 3D)."""
    return math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)


def _mean_power(lo: float, hi: float, p: int) -> float:
    """E[r**p] for r uniform on [lo, hi]: turns a target coverage into a particle count."""
    if hi - lo < 1e-12:
        return lo**p
    return (hi ** (p + 1) - lo ** (p + 1)) / ((p + 1) * (hi - lo))


def _random_rotation(rng: np.random.Generator, ndim: int) -> NDArray[np.float64]:
    """A uniformly random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))


def _paint_ellipsoids(
    labels: LabelArray,
    levels: NDArray[np.float64],
    rng: np.random.Generator,
    centres: NDArray[np.float64],
    radius_range: tuple[float, float],
    max_aspect: float,
    class_id: int,
    level_range: tuple[float, float],
    allowed: NDArray[np.bool_] | None = None,
) -> None:
    """Paint random ellipsoids (ellipses in 2D) into ``labels`` and ``levels`` in place.

    Each gets a radius from ``radius_range``, axis ratios up to ``max_aspect`` at constant
    volume, a random orientation and its own grey level, so touching particles stay visible.
    All random numbers are drawn up front, so the result depends on the seed only.
    """
    n, ndim = centres.shape
    radii = rng.uniform(*radius_range, size=n)
    log_axes = rng.uniform(-0.5, 0.5, size=(n, ndim)) * math.log(max_aspect)
    log_axes -= log_axes.mean(axis=1, keepdims=True)
    axes = radii[:, None] * np.exp(log_axes)
    rotations = [_random_rotation(rng, ndim) for _ in range(n)]
    grey = rng.uniform(*level_range, size=n)
    shape = np.asarray(labels.shape)
    for centre, ax, rot, g in zip(centres, axes, rotations, grey, strict=True):
        reach = ax.max()
        lo = np.maximum(np.floor(centre - reach).astype(int), 0)
        hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        coords = np.indices(tuple(hi - lo)).reshape(ndim, -1).T + lo - centre
        body = (coords @ rot) / ax
        inside = (np.einsum("ij,ij->i", body, body) <= 1.0).reshape(tuple(hi - lo))
        if allowed is not None:
            inside &= allowed[box]
        labels[box][inside] = class_id
        levels[box][inside] = g


def _as_image(levels: NDArray[np.float64]) -> FloatArray:
    """The clean image contract: float32 in [0, 1]."""
    return np.clip(levels, 0.0, 1.0).astype(np.float32)


# --- structures ---------------------------------------------------------------------------------


def pores(
    size: Size = 128, seed: Seed = 0, *, porosity: float = 0.4, sigma: float = 3.0
) -> Structure:
    """Porous solid: Gaussian-filtered white noise thresholded so that ``porosity`` is pore.

    ``sigma`` (pixels) is the correlation length of the noise, i.e. the pore size scale (porespy's
    ``blobs`` uses ``mean(shape) / (40 * blobiness)``; here it is in pixels so tiles cut from a
    large micrograph look like small micrographs). Classes: 0 solid, 1 pore; pores are dark.
    """
    where = f"{_WHERE}.pores"
    shape = _shape(size, where)
    _check(where, "porosity", porosity, 0.0, 1.0, closed=False)
    _check(where, "sigma", sigma, 0.3, 1e4)
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    pore = field < np.quantile(field, porosity)
    mask = pore.astype(np.int64)
    return _as_image(np.where(pore, 0.18, 0.72)), mask


def particles(
    size: Size = 128,
    seed: Seed = 0,
    *,
    coverage: float = 0.3,
    radius_range: tuple[float, float] = (4.0, 10.0),
    max_aspect: float = 1.6,
) -> Structure:
    """Overlapping bright ellipses (ellipsoids in 3D) on a dark background: a Boolean model.

    The particle count is chosen so the expected covered fraction is ``coverage``
    (``1 - exp(-density * mean particle area)``); centres also fall just outside the image so the
    edges are not depleted. Classes: 0 background, 1 particle.
    """
    where = f"{_WHERE}.particles"
    shape = _shape(size, where)
    _check(where, "coverage", coverage, 0.0, 0.95, closed=False)
    lo, hi = _check_radius_range(where, "radius_range", radius_range)
    _check(where, "max_aspect", max_aspect, 1.0, 10.0)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    margin = hi * math.sqrt(max_aspect)
    extended = np.asarray(shape, dtype=float) + 2 * margin
    mean_volume = _ball_volume(ndim) * _mean_power(lo, hi, ndim)
    n = round(-math.log1p(-coverage) * float(np.prod(extended)) / mean_volume)
    centres = rng.uniform(0.0, 1.0, size=(n, ndim)) * extended - margin
    labels = np.zeros(shape, dtype=np.int64)
    levels = np.full(shape, 0.22)
    _paint_ellipsoids(labels, levels, rng, centres, (lo, hi), max_aspect, 1, (0.68, 0.9))
    return _as_image(levels), labels


def grains(
    size: Size = 128,
    seed: Seed = 0,
    *,
    grain_size: float = 24.0,
    n_grains: int | None = None,
    boundary_width: int = 1,
) -> Structure:
    """Voronoi grains (nearest-seed labelling), one grey level per grain, dark boundary lines.

    ``n_grains`` defaults to ``area / grain_size**ndim`` (``grain_size`` in pixels), so tiles of a
    large micrograph keep the grain size. The mask marks boundaries (1) as lines
    ``boundary_width`` pixels thick: a pixel is boundary where its label differs from the next
    pixel along any axis, which is one-sided and so 1 pixel thick (``find_boundaries`` would give
    2). Classes: 0 grain, 1 boundary.
    """
    where = f"{_WHERE}.grains"
    shape = _shape(size, where)
    _check(where, "grain_size", grain_size, 2.0, 1e4)
    if n_grains is not None:
        _check(where, "n_grains", n_grains, 2, 1e6)
        if not isinstance(n_grains, int | np.integer):
            raise SpecError(f"{where}: n_grains", "an int >= 2", repr(n_grains), "or leave it out")
    _check(where, "boundary_width", boundary_width, 1, 16)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    n = int(n_grains) if n_grains else max(2, round(float(np.prod(shape)) / grain_size**ndim))
    seeds = rng.uniform(0.0, 1.0, size=(n, ndim)) * np.asarray(shape)
    grey = rng.uniform(0.35, 0.85, size=n)
    points = np.indices(shape).reshape(ndim, -1).T + 0.5
    _, nearest = cKDTree(seeds).query(points)
    grain_id = np.asarray(nearest, dtype=np.int64).reshape(shape)
    edge = np.zeros(shape, dtype=bool)
    for axis in range(ndim):
        head = tuple(slice(0, -1) if a == axis else slice(None) for a in range(ndim))
        edge[head] |= np.diff(grain_id, axis=axis) != 0
    if boundary_width > 1:
        edge = ndimage.binary_dilation(edge, structure=np.ones((int(boundary_width),) * ndim, bool))
    levels = np.where(edge, 0.1, grey[grain_id])
    return _as_image(levels), edge.astype(np.int64)


def phases(
    size: Size = 128,
    seed: Seed = 0,
    *,
    large_size: float = 14.0,
    channel_width: float = 6.0,
    small_fraction: float = 0.15,
    small_radius: tuple[float, float] = (1.0, 2.0),
    disorder: float = 0.5,
) -> Structure:
    """Superalloy-like gamma / gamma-prime: large rounded cuboids plus small precipitates.

    Large precipitates (edge ``large_size`` px) sit on a lattice of pitch
    ``large_size + channel_width`` with random offset; ``disorder`` (0..1) jitters their size
    (up to +-25 %) and position (within the room the channel leaves). Small round precipitates
    cover about ``small_fraction`` of the matrix channels, kept one pixel off the large ones.
    Classes: 0 matrix, 1 small precipitate, 2 large precipitate.
    """
    where = f"{_WHERE}.phases"
    shape = _shape(size, where)
    _check(where, "large_size", large_size, 2.0, 1e4)
    _check(where, "channel_width", channel_width, 1.0, 1e4)
    _check(where, "small_fraction", small_fraction, 0.0, 0.9)
    s_lo, s_hi = _check_radius_range(where, "small_radius", small_radius)
    _check(where, "disorder", disorder, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    pitch = large_size + channel_width
    offset = rng.uniform(0.0, pitch, size=ndim)
    # Lattice cell of every pixel: the nearest lattice node along each axis.
    k_first = [round((0 - offset[a]) / pitch) for a in range(ndim)]
    k_last = [round((shape[a] - 1 - offset[a]) / pitch) for a in range(ndim)]
    cells = tuple(k1 - k0 + 1 for k0, k1 in zip(k_first, k_last, strict=True))
    half = large_size / 2 * (1 + disorder * 0.25 * rng.uniform(-1, 1, size=(*cells, ndim)))
    room = np.maximum(pitch / 2 - half - 0.5, 0.0)
    shift = disorder * room * rng.uniform(-1, 1, size=(*cells, ndim))
    grey_large = rng.uniform(0.68, 0.8, size=cells)
    coords = np.indices(shape).astype(float)
    index = tuple(
        np.rint((coords[a] - offset[a]) / pitch).astype(int) - k_first[a] for a in range(ndim)
    )
    node = [(index[a] + k_first[a]) * pitch + offset[a] for a in range(ndim)]
    superellipse = sum(
        np.abs((coords[a] - node[a] - shift[(*index, a)]) / half[(*index, a)]) ** 4
        for a in range(ndim)
    )
    large = superellipse <= 1.0
    labels = np.where(large, 2, 0).astype(np.int64)
    levels = np.where(large, grey_large[index], 0.3)
    allowed = ~ndimage.binary_dilation(large)
    room_idx = np.flatnonzero(allowed)
    if small_fraction > 0 and room_idx.size:
        mean_volume = _ball_volume(ndim) * _mean_power(s_lo, s_hi, ndim)
        n = round(-math.log1p(-small_fraction) * room_idx.size / mean_volume)
        picks = rng.choice(room_idx, size=n, replace=True)
        centres = np.stack(np.unravel_index(picks, shape), axis=1).astype(float)
        centres += rng.uniform(-0.5, 0.5, size=centres.shape)
        _paint_ellipsoids(labels, levels, rng, centres, (s_lo, s_hi), 1.2, 1, (0.55, 0.65), allowed)
    return _as_image(levels), labels


#: Kind name -> generator ``f(size, seed, **knobs) -> (image, mask)``; add a structure here.
STRUCTURES: dict[str, Callable[..., Structure]] = {
    "pores": pores,
    "particles": particles,
    "grains": grains,
    "phases": phases,
}

#: Kind name -> class names, index = class id in the mask.
CLASSES: dict[str, tuple[str, ...]] = {
    "pores": ("solid", "pore"),
    "particles": ("background", "particle"),
    "grains": ("grain", "boundary"),
    "phases": ("matrix", "small_precipitate", "large_precipitate"),
}


def _structure(kind: str, knobs: Mapping[str, Any]) -> Callable[..., Structure]:
    """Look up a kind and check its knob names, so typos fail with the list of valid ones."""
    if kind not in STRUCTURES:
        raise SpecError(
            f"{_WHERE}: kind",
            f"one of {sorted(STRUCTURES)}",
            repr(kind),
            "add a generator to STRUCTURES to make a new kind",
        )
    fn = STRUCTURES[kind]
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("size", "seed")]
    unknown = sorted(set(knobs) - set(accepted))
    if unknown:
        raise SpecError(
            f"{_WHERE}.{kind}: knobs",
            f"names among {accepted}",
            repr(unknown),
            "check the spelling",
        )
    return fn


def generate(kind: str, size: Size = 128, seed: Seed = 0, **knobs: Any) -> Structure:
    """A 2D structure (or 3D for a 3-tuple size) of a registered ``kind``: ``(image, mask)``."""
    return _structure(kind, knobs)(size, seed, **knobs)


def generate_volume(kind: str, size: Size = 32, seed: Seed = 0, **knobs: Any) -> Structure:
    """A 3D structure: ``(volume float32 ZxYxX, labels int64 ZxYxX)``; an int size is a cube."""
    fn = _structure(kind, knobs)
    return fn(_shape(size, f"{_WHERE}.{kind}", ndim=3), seed, **knobs)


# --- simulated imaging --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagingConditions:
    """The knobs of the simulated instrument, applied by ``simulate_imaging`` in this order.

    - ``charging`` (peak added brightness, 0 = none) toward ``charging_side``, decaying over
      ``charging_length`` (fraction of the image span): SEM charging of an insulating sample.
    - ``blur_sigma``: Gaussian PSF sigma in pixels (focus, probe size).
    - ``gain`` / ``offset``: global brightness and contrast (detector settings, beam current);
      ``scan_drift``: relative gain change from the first to the last row (current drift during
      a slow scan).
    - ``snr``: full-scale signal-to-noise ratio (at intensity 1.0); ``None`` for no noise.
      ``noise_model`` ``poisson`` is shot noise (snr**2 counts at full scale, so dark pixels are
      quieter), ``gaussian`` is signal-independent with std ``1 / snr``.
    """

    snr: float | None = 25.0
    noise_model: NoiseModel = "poisson"
    blur_sigma: float = 0.7
    gain: float = 1.0
    offset: float = 0.0
    scan_drift: float = 0.0
    charging: float = 0.0
    charging_side: Side = "right"
    charging_length: float = 0.3

    def __post_init__(self) -> None:
        where = f"{_WHERE}.ImagingConditions"
        if self.snr is not None:
            _check(where, "snr", self.snr, 0.1, 1e6)
        if self.noise_model not in get_args(NoiseModel):
            raise SpecError(
                f"{where}: noise_model", f"one of {get_args(NoiseModel)}", repr(self.noise_model)
            )
        _check(where, "blur_sigma", self.blur_sigma, 0.0, 100.0)
        _check(where, "gain", self.gain, 0.0, 10.0)
        _check(where, "offset", self.offset, -1.0, 1.0)
        _check(where, "scan_drift", self.scan_drift, -1.0, 1.0)
        _check(where, "charging", self.charging, 0.0, 2.0)
        if self.charging_side not in get_args(Side):
            raise SpecError(
                f"{where}: charging_side", f"one of {get_args(Side)}", repr(self.charging_side)
            )
        _check(where, "charging_length", self.charging_length, 0.01, 10.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping (recorded in dataset.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagingConditions:
        """Build from a mapping; unknown keys are an error, never silently ignored."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise SpecError(
                f"{_WHERE}.ImagingConditions",
                f"keys among {names}",
                repr(unknown),
                "check spelling",
            )
        return cls(**data)


def _as_float(image: NDArray[Any], where: str) -> NDArray[np.float64]:
    """Check an image argument (2D or 3D, finite) and return it as float64 for processing."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "fiu" or min(arr.shape) < 1:
        raise SpecError(f"{where}: image", "a 2D or 3D numeric array", f"{arr.dtype} {arr.shape}")
    return arr.astype(np.float64)


def add_noise(
    image: NDArray[Any], snr: float, rng: np.random.Generator, model: NoiseModel = "poisson"
) -> FloatArray:
    """Detector noise at full-scale ``snr``: Poisson shot noise or signal-independent Gaussian."""
    arr = np.clip(_as_float(image, f"{_WHERE}.add_noise"), 0.0, None)
    _check(f"{_WHERE}.add_noise", "snr", snr, 0.1, 1e6)
    if model == "poisson":
        counts = snr**2
        noisy = rng.poisson(arr * counts) / counts
    elif model == "gaussian":
        noisy = arr + rng.normal(0.0, 1.0 / snr, size=arr.shape)
    else:
        raise SpecError(f"{_WHERE}.add_noise: model", f"one of {get_args(NoiseModel)}", repr(model))
    return _as_image(noisy)


def blur(image: NDArray[Any], sigma: float) -> FloatArray:
    """Gaussian point-spread function of ``sigma`` pixels (all axes)."""
    arr = _as_float(image, f"{_WHERE}.blur")
    _check(f"{_WHERE}.blur", "sigma", sigma, 0.0, 100.0)
    return _as_image(ndimage.gaussian_filter(arr, sigma, mode="reflect") if sigma > 0 else arr)


def drift(
    image: NDArray[Any], gain: float = 1.0, offset: float = 0.0, scan_drift: float = 0.0
) -> FloatArray:
    """Brightness drift: ``image * gain * (1 + scan_drift * row / (rows - 1)) + offset``."""
    arr = _as_float(image, f"{_WHERE}.drift")
    rows = arr.shape[-2]
    ramp = 1.0 + scan_drift * np.linspace(0.0, 1.0, rows)[:, None]
    return _as_image(arr * gain * ramp + offset)


def charging(
    image: NDArray[Any],
    strength: float,
    side: Side = "right",
    length: float = 0.3,
    rng: np.random.Generator | None = None,
) -> FloatArray:
    """SEM charging: smooth brightening toward one ``side`` of each (y, x) plane.

    The added brightness is ``strength * exp((t - 1) / length)`` with ``t`` running 0 -> 1 toward
    ``side``; with an ``rng`` it is modulated by +-25 % low-frequency noise, so the halo is not
    the same on every micrograph.
    """
    arr = _as_float(image, f"{_WHERE}.charging")
    if side not in get_args(Side):
        raise SpecError(f"{_WHERE}.charging: side", f"one of {get_args(Side)}", repr(side))
    plane = arr.shape[-2:]
    axis = 1 if side in ("left", "right") else 0
    t = np.linspace(0.0, 1.0, plane[axis])
    if side in ("left", "top"):
        t = t[::-1]
    profile = np.exp((t - 1.0) / length)
    ramp = np.broadcast_to(profile[None, :] if axis == 1 else profile[:, None], plane).copy()
    if rng is not None:
        field = ndimage.gaussian_filter(rng.standard_normal(plane), sigma=min(plane) / 6)
        field /= field.std() + 1e-12
        ramp *= np.clip(1.0 + 0.25 * field, 0.0, None)
    return _as_image(arr + strength * ramp)


def simulate_imaging(
    clean: NDArray[Any], conditions: ImagingConditions | None = None, seed: Seed = 0
) -> FloatArray:
    """Apply charging, blur, drift and noise (that order) to a clean image; float32 in [0, 1].

    Charging and noise get independent random streams from ``seed``, so changing one effect's
    strength does not reshuffle the other's randomness.
    """
    c = conditions or ImagingConditions()
    charge_rng, noise_rng = np.random.default_rng(seed).spawn(2)
    out = _as_image(_as_float(clean, f"{_WHERE}.simulate_imaging"))
    if c.charging > 0:
        out = charging(out, c.charging, c.charging_side, c.charging_length, charge_rng)
    out = blur(out, c.blur_sigma)
    out = drift(out, c.gain, c.offset, c.scan_drift)
    if c.snr is not None:
        out = add_noise(out, c.snr, noise_rng, c.noise_model)
    return out


#: Named acquisition shifts for QC work; see ``shifted_conditions``.
SCENARIOS = ("noise", "blur", "drift", "charging")


def shifted_conditions(
    base: ImagingConditions, scenario: str, strength: float = 1.0
) -> ImagingConditions:
    """``base`` worsened along one named axis; ``strength`` 0 is ``base``, 1 a clear shift.

    - ``noise``: ``snr / (1 + 3 * strength)`` (a noise-free base starts from snr 40).
    - ``blur``: ``blur_sigma + 2 * strength`` pixels.
    - ``drift``: ``gain * (1 - 0.25 * strength)`` and ``scan_drift - 0.2 * strength`` (darker,
      darkening down the scan: a decaying beam current).
    - ``charging``: ``charging + 0.4 * strength``.
    """
    if scenario not in SCENARIOS:
        raise SpecError(
            f"{_WHERE}.shifted_conditions: scenario", f"one of {SCENARIOS}", repr(scenario)
        )
    _check(f"{_WHERE}.shifted_conditions", "strength", strength, 0.0, 10.0)
    if strength == 0:
        return base
    s = float(strength)
    if scenario == "noise":
        return dataclasses.replace(base, snr=(base.snr or 40.0) / (1 + 3 * s))
    if scenario == "blur":
        return dataclasses.replace(base, blur_sigma=base.blur_sigma + 2 * s)
    if scenario == "drift":
        return dataclasses.replace(
            base,
            gain=base.gain * max(0.0, 1 - 0.25 * s),
            scan_drift=max(-1.0, base.scan_drift - 0.2 * s),
        )
    return dataclasses.replace(base, charging=min(2.0, base.charging + 0.4 * s))


# --- dataset writer -----------------------------------------------------------------------------


def _png_bytes(array: NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _tiff_bytes(array: NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays in knobs become plain JSON numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _to_uint8(image: NDArray[Any]) -> NDArray[np.uint8]:
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _check_count(name: str, value: Any, lo: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < lo:
        raise SpecError(f"{_WHERE}.write_synthetic_dataset: {name}", f"an int >= {lo}", repr(value))


def _tile_stems(kind: str, n_images: int) -> list[str]:
    """The first ``n_images`` tile stems ``<kind>_m<NNN>_tile<r><c>``, micrograph by micrograph."""
    n_micrographs = -(-n_images // (TILE_GRID * TILE_GRID))
    return [
        f"{kind}_m{m:03d}_tile{r}{c}"
        for m in range(n_micrographs)
        for r in range(TILE_GRID)
        for c in range(TILE_GRID)
    ][:n_images]


def _refuse_foreign_tiles(out_dir: Path, stems: list[str]) -> None:
    """Refuse a folder holding PNGs this call would not write: stale tiles would join the data."""
    wanted = set(stems)
    foreign = sorted(
        p.name
        for folder in (out_dir / "images", out_dir / "masks")
        if folder.is_dir()
        for p in folder.glob("*.png")
        if p.stem not in wanted
    )
    if foreign:
        raise SpecError(
            str(out_dir),
            "an empty folder or one written by the same call",
            f"{len(foreign)} other PNG files (e.g. {foreign[0]})",
            "choose a new out_dir so old tiles do not mix into the dataset",
        )


def _write_micrograph(
    out_dir: Path,
    kind: str,
    index: int,
    stems: set[str],
    size: int,
    seed: int,
    conditions: ImagingConditions,
    knobs: Mapping[str, Any],
) -> None:
    """Generate micrograph ``index`` at ``TILE_GRID * size``, image it, write its wanted tiles."""
    clean, mask = STRUCTURES[kind](
        TILE_GRID * size, np.random.SeedSequence([seed, 0, index, 0]), **knobs
    )
    image = _to_uint8(
        simulate_imaging(clean, conditions, np.random.SeedSequence([seed, 0, index, 1]))
    )
    mask8 = mask.astype(np.uint8)
    for r in range(TILE_GRID):
        for c in range(TILE_GRID):
            stem = f"{kind}_m{index:03d}_tile{r}{c}"
            if stem in stems:
                cut = (slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size))
                write_bytes(out_dir / "images" / f"{stem}.png", _png_bytes(image[cut]))
                write_bytes(out_dir / "masks" / f"{stem}.png", _png_bytes(mask8[cut]))


def _write_volume(
    out_dir: Path,
    kind: str,
    index: int,
    size: int,
    seed: int,
    conditions: ImagingConditions,
    knobs: Mapping[str, Any],
) -> None:
    """Generate, image and write volume ``index`` and its labels as uint8 TIFF (z, y, x)."""
    volume, labels = STRUCTURES[kind](
        (size,) * 3, np.random.SeedSequence([seed, 1, index, 0]), **knobs
    )
    imaged = simulate_imaging(volume, conditions, np.random.SeedSequence([seed, 1, index, 1]))
    write_bytes(out_dir / "volumes" / f"vol{index}.tif", _tiff_bytes(_to_uint8(imaged)))
    write_bytes(out_dir / "volume_labels" / f"vol{index}.tif", _tiff_bytes(labels.astype(np.uint8)))


def _dataset_spec(
    kind: str,
    seed: int,
    conditions: ImagingConditions,
    knobs: Mapping[str, Any],
    n_images: int,
    size: int,
    n_volumes: int,
    volume_size: int,
) -> dict[str, Any]:
    """The dataset.json mapping (the shape ``matseg.datasets.spec`` reads) plus provenance."""
    metadata: dict[str, Any] = {
        "generator": _WHERE,
        "kind": kind,
        "seed": int(seed),
        "conditions": conditions.to_dict(),
        "knobs": dict(knobs),
        "n_images": int(n_images),
        "tile_size": int(size),
        "micrograph_size": TILE_GRID * int(size),
        "naming": "<kind>_m<micrograph>_tile<row><col>.png; group = stem before _tile",
    }
    if n_volumes:
        metadata["volumes"] = {
            "n": int(n_volumes),
            "size": int(volume_size),
            "images": "volumes",
            "labels": "volume_labels",
        }
    return {
        "name": f"synthetic-{kind}",
        "root": ".",
        "images": "images",
        "masks": "masks",
        "encoding": {"type": "index"},
        "classes": list(CLASSES[kind]),
        "modality": "SEM",
        "material": f"synthetic {kind}",
        "metadata": metadata,
        "split": {"method": "random", "seed": int(seed), "group_pattern": GROUP_PATTERN},
    }


def write_synthetic_dataset(
    out_dir: Path,
    kind: str = "pores",
    n_images: int = 12,
    size: int = 128,
    seed: int = 0,
    conditions: ImagingConditions | Mapping[str, Any] | None = None,
    n_volumes: int = 0,
    volume_size: int = 32,
    knobs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a labelled synthetic dataset with its ``dataset.json`` spec; return the spec path.

    Each micrograph ``<kind>_m<NNN>`` is generated at ``2 * size`` pixels, imaged with
    ``conditions`` and cut into 2 x 2 tiles ``<kind>_m<NNN>_tile<r><c>.png`` (``images/`` uint8
    grey, ``masks/`` uint8 class ids), until ``n_images`` tiles exist. Tiles of one micrograph
    share a stem prefix, matched by ``GROUP_PATTERN`` ``^(.*)_tile\\d+$``, so a group-aware split
    never puts one micrograph on both sides. With ``n_volumes`` > 0 it also writes
    ``volumes/vol<i>.tif`` and ``volume_labels/vol<i>.tif`` (uint8, z, y, x). Micrograph ``i``
    draws from ``SeedSequence([seed, 0, i, ...])``, so the same arguments give byte-identical
    files and adding images leaves the earlier ones unchanged. ``knobs`` go to the generator.
    """
    out_dir = Path(out_dir)
    knob_values = dict(knobs or {})
    _structure(kind, knob_values)
    _check_count("n_images", n_images, 1)
    _check_count("size", size, 2 * MIN_SIZE)
    _check_count("seed", seed, 0)
    _check_count("n_volumes", n_volumes, 0)
    _check_count("volume_size", volume_size, MIN_SIZE)
    if not isinstance(conditions, ImagingConditions):
        conditions = ImagingConditions.from_dict(conditions or {})
    stems = _tile_stems(kind, n_images)
    _refuse_foreign_tiles(out_dir, stems)
    for folder in ("images", "masks") + (("volumes", "volume_labels") if n_volumes else ()):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for m in range(-(-n_images // (TILE_GRID * TILE_GRID))):
        _write_micrograph(out_dir, kind, m, set(stems), size, seed, conditions, knob_values)
    for v in range(n_volumes):
        _write_volume(out_dir, kind, v, volume_size, seed, conditions, knob_values)
    spec = _dataset_spec(
        kind, seed, conditions, knob_values, n_images, size, n_volumes, volume_size
    )
    spec_path = out_dir / "dataset.json"
    text = json.dumps(spec, indent=2, default=_json_default) + "\n"
    write_bytes(spec_path, text.encode("utf-8"))
    return spec_path
