"""Microstructure quantities of a class mask: the numbers a materials scientist publishes.

One registry (:data:`QUANTITIES`), one function per quantity, each taking a class-id mask (2D
image or 3D volume), the class it measures and the pixel size, and returning a
:class:`Measurement` in physical units where the pixel size is known (µm, µm², µm⁻²; µm³ and
µm⁻³ for volumes) and in pixels, with a note, where it is not.

- ``area_fraction``: pixels (voxels) of the class over all counted pixels; for a volume the 3D
  fraction over the whole stack. Porosity is the area fraction of the pore class.
- Features of a class are its connected components (:func:`features`): 8-connected in 2D and
  26-connected in 3D by default (``connectivity`` is stated in every measurement). Their
  ``feature_count``, ``number_density``, ``feature_size`` (equivalent circular diameter; the
  equivalent sphere diameter in 3D), ``feret_max``, ``feret_min`` and ``aspect_ratio``
  (ISO 9276-6: minimum over maximum Feret diameter, in (0, 1]) come with their distributions.
- Features cut by the image border are biased (large ones are cut more often). ``border`` says
  what is done: ``"miles-lantuejoul"`` (default) leaves them out and weighs every other feature
  by ``prod(L_i) / prod(L_i - b_i)`` (``L`` the image side, ``b`` the feature's bounding-box
  extent along that axis: Miles 1974, Lantuejoul 1978), which makes counts, densities and
  size distributions unbiased; ``"exclude"`` leaves them out unweighted; ``"include"`` keeps
  them as cut.
- ``grain_size``: ASTM E112-13 grain size number G from the mean lineal intercept (test lines
  in four directions, 0, 45, 90 and 135 degrees, :func:`mean_lineal_intercept`), and
  ``grain_size_planimetric``: G from Jeffries' planimetric count (E112 section 11:
  ``N_A = (N_inside + N_intercepted / 2 + 1) / A``, the 1 for the four corner grains). Grains
  are the 4-connected regions that the boundary class separates. G needs the pixel size.

scikit-image (``label``, ``regionprops``) and scipy do the labelling, areas and ECD; written
here is only what they lack: Feret diameters on the pixel outline in one pass (the minimum by
rotating calipers), the border correction and the E112 counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from matseg.errors import SpecError

Border = Literal["miles-lantuejoul", "exclude", "include"]
BORDER_RULES: tuple[str, ...] = ("miles-lantuejoul", "exclude", "include")
UNKNOWN_SCALE = "pixel size unknown: in pixels"
NO_FEATURES = "no feature of the class: count 0, sizes undefined"
_UM_PER_MM = 1000.0


@dataclass(frozen=True)
class Scale:
    """The pixel (voxel) size in µm, or None: then lengths are in px and G is undefined."""

    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        size = self.pixel_size_um
        if size is not None and not (math.isfinite(size) and size > 0):
            raise SpecError("pixel_size_um", "a finite size > 0 in µm (or none)", repr(size))

    def length(self, px: NDArray[np.float64] | float) -> NDArray[np.float64] | float:
        return px if self.pixel_size_um is None else px * self.pixel_size_um

    def unit(self, power: int) -> str:
        base = "px" if self.pixel_size_um is None else "µm"
        return base if power == 1 else f"{base}{_superscript(power)}"

    @property
    def note(self) -> str:
        return UNKNOWN_SCALE if self.pixel_size_um is None else ""


def _superscript(power: int) -> str:
    table = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    return str(power).translate(table)


@dataclass(frozen=True)
class Measurement:
    """One quantity of one class on one mask; ``values`` / ``weights`` hold the distribution
    behind a feature quantity (one value per feature, weighted by the border rule)."""

    quantity: str
    class_id: int
    value: float  # NaN when undefined (with a note saying why)
    unit: str
    note: str = ""
    values: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    weights: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))


Quantity = Callable[..., "Measurement"]


@dataclass(frozen=True)
class Features:
    """The connected components of one class, measured (lengths in the scale's unit)."""

    class_id: int
    connectivity: int  # neighbours: 4 or 8 in 2D, 6, 18 or 26 in 3D
    border: str
    ndim: int
    image_size: float  # counted area (volume) in the scale's unit
    weights: NDArray[np.float64]  # per kept feature: 1, or the Miles-Lantuejoul weight
    ecd: NDArray[np.float64]  # equivalent circular (sphere) diameter
    feret_max: NDArray[np.float64]
    feret_min: NDArray[np.float64]  # NaN in 3D (not measured)
    cut_by_border: int  # features touching the border (left out unless border = include)

    @property
    def count(self) -> float:
        """Number of features, border-corrected under Miles-Lantuejoul (so not always whole)."""
        return float(self.weights.sum())

    @property
    def aspect_ratio(self) -> NDArray[np.float64]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.feret_min / self.feret_max


def _check_mask(mask: NDArray[np.integer], where: str) -> NDArray[np.integer]:
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise SpecError(where, "a 2D image or 3D volume mask", f"shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise SpecError(where, "integer class ids", f"dtype {arr.dtype}")
    return arr


def _neighbours(ndim: int, connectivity: int | None) -> tuple[int, int]:
    """(scikit-image's connectivity rank, neighbour count) of a stated neighbour count."""
    full = 8 if ndim == 2 else 26
    wanted = full if connectivity is None else connectivity
    ranks = {4: 1, 8: 2} if ndim == 2 else {6: 1, 18: 2, 26: 3}
    if wanted not in ranks:
        raise SpecError("connectivity", f"one of {sorted(ranks)} in {ndim}D", repr(connectivity))
    return ranks[wanted], wanted


def area_fraction(
    mask: NDArray[np.integer],
    class_id: int,
    scale: Scale = Scale(),
    ignore_index: int | None = None,
) -> Measurement:
    """Share of counted pixels (voxels) that are ``class_id``; ignored pixels are not counted."""
    arr = _check_mask(mask, "area_fraction")
    counted = arr != ignore_index if ignore_index is not None else np.ones(arr.shape, bool)
    n = int(counted.sum())
    value = float(((arr == class_id) & counted).sum() / n) if n else math.nan
    return Measurement("area_fraction", class_id, value, "1", "" if n else "no counted pixel")


def feret_diameters(coords: NDArray[np.int64]) -> tuple[float, float]:
    """(maximum, minimum) Feret diameter of a 2D feature given its pixel coordinates.

    Calipers touch the outline of the pixels (their corners, as ImageJ measures Feret), and the
    outline's convex hull is that of each row's outermost pixels, so four corners per row are
    all the hull needs. The maximum is the largest distance between hull vertices; the minimum
    is reached with one caliper flush with a hull edge, so it is the least, over hull edges, of
    the farthest vertex's distance from that edge's line (rotating calipers). Written here
    because scikit-image gives only the maximum, through a slower contour of the convex image.
    """
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    points = _row_extremes(coords)
    hull = points[ConvexHull(points).vertices]
    edges = np.roll(hull, -1, axis=0) - hull
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    spans = hull @ normals.T  # (vertices, edges)
    return float(pdist(hull).max()), float((spans.max(axis=0) - spans.min(axis=0)).min())


def _row_extremes(coords: NDArray[np.int64]) -> NDArray[np.float64]:
    """Corners of the outermost pixels (voxels) of each row along the last axis: their convex
    hull is the feature's."""
    order = np.lexsort(coords.T[::-1])
    c = coords[order]
    head = c[:, :-1]
    starts = np.flatnonzero(np.r_[True, (head[1:] != head[:-1]).any(axis=1)])
    lo = np.minimum.reduceat(c[:, -1], starts).astype(float)
    hi = np.maximum.reduceat(c[:, -1], starts).astype(float) + 1.0
    rows = head[starts].astype(float)
    corners = []
    for offset in np.ndindex(*(2,) * rows.shape[1]):
        base = rows + np.asarray(offset, dtype=float)
        corners += [np.column_stack([base, lo]), np.column_stack([base, hi])]
    return np.concatenate(corners)


def _feret_max_3d(coords: NDArray[np.int64]) -> float:
    """Largest caliper diameter of a 3D feature on its voxel outline (voxel corners never lie
    in one plane, so the hull always exists; scikit-image's marching cubes fails on thin ones)."""
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    points = _row_extremes(coords)
    return float(pdist(points[ConvexHull(points).vertices]).max())


def features(
    mask: NDArray[np.integer],
    class_id: int,
    scale: Scale = Scale(),
    *,
    connectivity: int | None = None,
    border: Border = "miles-lantuejoul",
) -> Features:
    """The connected components of ``class_id``, measured, under the ``border`` rule."""
    from skimage.measure import label, regionprops

    arr = _check_mask(mask, "features")
    if border not in BORDER_RULES:
        raise SpecError("border", f"one of {', '.join(BORDER_RULES)}", repr(border))
    rank, neighbours = _neighbours(arr.ndim, connectivity)
    labels = label(arr == class_id, connectivity=rank)
    shape = np.asarray(arr.shape, dtype=float)
    weights, ecd, fmax, fmin, cut = [], [], [], [], 0
    for region in regionprops(labels):
        lo = np.asarray(region.bbox[: arr.ndim], dtype=float)
        hi = np.asarray(region.bbox[arr.ndim :], dtype=float)
        touches = bool((lo == 0).any() or (hi == shape).any())
        cut += touches
        if touches and border != "include":
            continue
        weight = 1.0
        if border == "miles-lantuejoul":
            weight = float(np.prod(shape) / np.prod(shape - (hi - lo)))
        weights.append(weight)
        ecd.append(region.equivalent_diameter_area)
        if arr.ndim == 2:
            longest, shortest = feret_diameters(region.coords)
        else:  # 3D: the maximum on the voxel outline; the minimum is not measured
            longest, shortest = _feret_max_3d(region.coords), math.nan
        fmax.append(longest)
        fmin.append(shortest)
    return Features(
        class_id=class_id, connectivity=neighbours, border=border, ndim=arr.ndim,
        image_size=float(scale.length(1.0) ** arr.ndim * np.prod(shape)),
        weights=np.asarray(weights, dtype=float),
        ecd=np.asarray(scale.length(np.asarray(ecd, dtype=float))),
        feret_max=np.asarray(scale.length(np.asarray(fmax, dtype=float))),
        feret_min=np.asarray(scale.length(np.asarray(fmin, dtype=float))),
        cut_by_border=cut,
    )  # fmt: skip


def _feature_note(f: Features, scale: Scale) -> str:
    rule = {
        "miles-lantuejoul": f"{f.cut_by_border} cut by the border left out, the rest "
        "Miles-Lantuejoul weighted",
        "exclude": f"{f.cut_by_border} cut by the border left out",
        "include": f"{f.cut_by_border} cut by the border kept as cut",
    }[f.border]
    parts = [f"{f.connectivity}-connected", rule]
    if not len(f.weights):
        parts.append(NO_FEATURES)
    if scale.note:
        parts.append(scale.note)
    return "; ".join(parts)


def _weighted_mean(values: NDArray[np.float64], weights: NDArray[np.float64]) -> float:
    ok = np.isfinite(values)
    if not ok.any():
        return math.nan
    return float(np.average(values[ok], weights=weights[ok]))


_FEATURE_VALUES: dict[str, tuple[Callable[[Features], NDArray[np.float64]], int]] = {
    "feature_size": (lambda f: f.ecd, 1),
    "feret_max": (lambda f: f.feret_max, 1),
    "feret_min": (lambda f: f.feret_min, 1),
    "aspect_ratio": (lambda f: f.aspect_ratio, 0),
}


def of_features(name: str, f: Features, scale: Scale) -> Measurement:
    """A feature quantity from measured features: the count, the number density, or the
    weighted mean of a size or shape, with its distribution."""
    note = _feature_note(f, scale)
    if name == "feature_count":
        return Measurement(name, f.class_id, f.count, "features", note)
    if name == "number_density":
        return Measurement(name, f.class_id, f.count / f.image_size, scale.unit(-f.ndim), note)
    pick, power = _FEATURE_VALUES[name]
    values = pick(f)
    unit = "1" if power == 0 else scale.unit(power)
    return Measurement(name, f.class_id, _weighted_mean(values, f.weights), unit, note, values,
                       f.weights)  # fmt: skip


def _feature_quantity(name: str, doc: str) -> Quantity:
    def quantity(
        mask: NDArray[np.integer], class_id: int, scale: Scale = Scale(), **options: object
    ) -> Measurement:
        return of_features(name, features(mask, class_id, scale, **options), scale)  # type: ignore[arg-type]

    quantity.__name__ = name
    quantity.__doc__ = doc
    return quantity


feature_count = _feature_quantity(
    "feature_count", "Number of features of the class (border-corrected under Miles-Lantuejoul)."
)
number_density = _feature_quantity("number_density", "Features of the class per unit area.")
feature_size = _feature_quantity("feature_size", "Weighted mean equivalent circular diameter.")
feret_max = _feature_quantity("feret_max", "Weighted mean maximum Feret diameter.")
feret_min = _feature_quantity("feret_min", "Weighted mean minimum Feret diameter.")
aspect_ratio = _feature_quantity("aspect_ratio", "Weighted mean ISO 9276-6 aspect ratio.")
FEATURE_NAMES = ("feature_count", "number_density", *_FEATURE_VALUES)


# --- grain size (ASTM E112) -------------------------------------------------------------------

#: E112-13 relations: G from the mean lineal intercept (mm) and from grains per mm² (at 1x).
E112_INTERCEPT = (-6.643856, -3.288)
E112_PLANIMETRIC = (3.321928, -2.954)
TEST_LINE_ANGLES = (0, 45, 90, 135)


def _test_lines(
    shape: tuple[int, int], angle: int, spacing: int
) -> list[tuple[NDArray[np.int64], float]]:
    """Parallel test lines across an image, ``spacing`` pixels apart: (pixel path, length)."""
    h, w = shape
    if angle == 0:
        return [(np.stack([np.full(w, r), np.arange(w)], 1), w - 1.0)
                for r in range(spacing // 2, h, spacing)]  # fmt: skip
    if angle == 90:
        return [(np.stack([np.arange(h), np.full(h, c)], 1), h - 1.0)
                for c in range(spacing // 2, w, spacing)]  # fmt: skip
    lines = []
    step = spacing * math.sqrt(2)  # the same perpendicular spacing as the axis lines
    sign = 1 if angle == 45 else -1
    for start in np.arange(-h + step / 2, w, step):
        rows = np.arange(h)
        cols = (start + rows if sign > 0 else (w - 1 - start) - rows).round().astype(int)
        keep = (cols >= 0) & (cols < w)
        rows, cols = rows[keep], cols[keep]
        if len(rows) < 2:
            continue
        lines.append((np.stack([rows, cols], 1), (len(rows) - 1) * math.sqrt(2)))
    return lines


def mean_lineal_intercept(
    mask: NDArray[np.integer],
    boundary_class: int,
    scale: Scale = Scale(),
    spacing: int = 8,
) -> Measurement:
    """ASTM E112 mean lineal intercept: total test-line length over boundary intersections.

    Test lines run in four directions (0, 45, 90, 135 degrees), ``spacing`` pixels apart. An
    intersection P is a change of grain along a line, boundary pixels skipped (E112 section 14:
    a line ending inside a grain adds nothing to P). Counting grain changes rather than runs of
    boundary pixels keeps a diagonal line from slipping between the pixels of an 8-connected
    boundary, and a line along a boundary from counting it many times.
    """
    arr = _check_mask(mask, "mean_lineal_intercept")
    if arr.ndim != 2:
        raise SpecError("grain_size", "a 2D image (E112 is planar)", f"{arr.ndim}D mask")
    labels = grains(arr, boundary_class)
    length, crossings = 0.0, 0
    for angle in TEST_LINE_ANGLES:
        for path, line_length in _test_lines(labels.shape, angle, spacing):
            ids = labels[path[:, 0], path[:, 1]]
            ids = ids[ids > 0]
            crossings += int(np.count_nonzero(np.diff(ids)))
            length += line_length
    intercept = float(scale.length(length / crossings)) if crossings else math.nan
    note = "no boundary crossed by any test line" if not crossings else scale.note
    return Measurement("mean_lineal_intercept", boundary_class, intercept, scale.unit(1), note)


def grains(mask: NDArray[np.integer], boundary_class: int) -> NDArray[np.int64]:
    """Grain labels: the 4-connected regions of pixels that are not boundary (0 = boundary)."""
    from skimage.measure import label

    return label(np.asarray(mask) != boundary_class, connectivity=1).astype(np.int64)


def jeffries_count(labels: NDArray[np.int64]) -> float:
    """E112's planimetric count on the whole image as the test rectangle: grains inside count
    1, grains the border cuts 1/2, and the (up to four) corner grains 1/4 each."""
    ids = np.unique(labels[labels > 0])
    if not ids.size:
        return 0.0
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    corners = {int(v) for v in labels[[0, 0, -1, -1], [0, -1, 0, -1]] if v > 0}
    edge = {int(v) for v in edge if v > 0} - corners
    return float(len(ids) - len(edge) - len(corners) + 0.5 * len(edge) + 0.25 * len(corners))


def _grain_number(value: float, coefficients: tuple[float, float]) -> float:
    a, b = coefficients
    return a * math.log10(value) + b if value > 0 and math.isfinite(value) else math.nan


def grain_size(
    mask: NDArray[np.integer], boundary_class: int, scale: Scale = Scale(), spacing: int = 8
) -> Measurement:
    """ASTM E112 grain size number G from the mean lineal intercept (needs the pixel size)."""
    intercept = mean_lineal_intercept(mask, boundary_class, scale, spacing)
    if scale.pixel_size_um is None:
        return Measurement("grain_size", boundary_class, math.nan, "G", UNKNOWN_SCALE +
                           ": G needs the pixel size")  # fmt: skip
    g = _grain_number(intercept.value / _UM_PER_MM, E112_INTERCEPT)
    note = f"E112 intercept, {len(TEST_LINE_ANGLES)} directions; mean intercept " + (
        f"{intercept.value:.3g} µm" if math.isfinite(intercept.value) else intercept.note
    )
    return Measurement("grain_size", boundary_class, g, "G", note)


def grain_size_planimetric(
    mask: NDArray[np.integer], boundary_class: int, scale: Scale = Scale()
) -> Measurement:
    """ASTM E112 grain size number G from Jeffries' planimetric count (needs the pixel size)."""
    arr = _check_mask(mask, "grain_size_planimetric")
    if arr.ndim != 2:
        raise SpecError("grain_size", "a 2D image (E112 is planar)", f"{arr.ndim}D mask")
    count = jeffries_count(grains(arr, boundary_class))
    if scale.pixel_size_um is None:
        return Measurement("grain_size_planimetric", boundary_class, math.nan, "G",
                           UNKNOWN_SCALE + ": G needs the pixel size")  # fmt: skip
    area_mm2 = arr.size * (scale.pixel_size_um / _UM_PER_MM) ** 2
    g = _grain_number(count / area_mm2, E112_PLANIMETRIC)
    return Measurement("grain_size_planimetric", boundary_class, g, "G",
                       f"E112 Jeffries: {count:g} grains counted")  # fmt: skip


QUANTITIES: dict[str, Quantity] = {
    "area_fraction": area_fraction,
    "feature_count": feature_count,
    "number_density": number_density,
    "feature_size": feature_size,
    "feret_max": feret_max,
    "feret_min": feret_min,
    "aspect_ratio": aspect_ratio,
    "mean_lineal_intercept": mean_lineal_intercept,
    "grain_size": grain_size,
    "grain_size_planimetric": grain_size_planimetric,
}


def measure(
    name: str,
    mask: NDArray[np.integer],
    class_id: int,
    scale: Scale = Scale(),
    ignore_index: int | None = None,
) -> Measurement:
    """One registered quantity of one class (one-line error for an unknown name);
    ``ignore_index``: pixels an area fraction does not count."""
    if name not in QUANTITIES:
        raise SpecError("quantity", f"one of {', '.join(QUANTITIES)}", repr(name))
    if name == "area_fraction":
        return area_fraction(mask, class_id, scale, ignore_index)
    return QUANTITIES[name](mask, class_id, scale)


def measure_many(
    mask: NDArray[np.integer],
    wanted: list[tuple[str, int]],
    scale: Scale = Scale(),
    ignore_index: int | None = None,
) -> list[Measurement]:
    """Several (quantity, class) of one mask, each class's features labelled and measured once."""
    found: dict[int, Features] = {}
    out = []
    for name, class_id in wanted:
        if name in FEATURE_NAMES:
            if class_id not in found:
                found[class_id] = features(mask, class_id, scale)
            out.append(of_features(name, found[class_id], scale))
        else:
            out.append(measure(name, mask, class_id, scale, ignore_index))
    return out


# --- what to measure on a mask ----------------------------------------------------------------

FEATURE_QUANTITIES = ("feature_count", "number_density", "feature_size", "aspect_ratio")
GRAIN_QUANTITIES = ("grain_size", "grain_size_planimetric", "mean_lineal_intercept")
DISTRIBUTIONS = ("feature_size", "feret_max", "feret_min", "aspect_ratio")


def is_boundary_class(name: str) -> bool:
    """A class of grain boundaries (its complement is the grains): named so."""
    return "boundar" in name.lower()


def default_quantities(classes: list[str]) -> list[tuple[str, int]]:
    """(quantity, class id) a scientist reads off a mask of these classes: every class's area
    fraction; features of every class but the first (background by convention); grain size
    where a class is a grain boundary."""
    out = [("area_fraction", c) for c in range(len(classes))]
    for c, name in enumerate(classes):
        if is_boundary_class(name):
            out += [(quantity, c) for quantity in GRAIN_QUANTITIES]
        elif c > 0:
            out += [(quantity, c) for quantity in FEATURE_QUANTITIES]
    return out


@dataclass(frozen=True)
class Target:
    """The quantity a task is for, e.g. ``area_fraction:pore`` or ``grain_size``."""

    quantity: str
    class_id: int
    class_name: str

    @property
    def name(self) -> str:
        return f"{self.quantity}:{self.class_name}"

    @classmethod
    def parse(cls, text: str, classes: list[str]) -> Target:
        """From ``quantity[:class]`` (the class by name; grain quantities default to the
        boundary class); a one-line error names what is unknown."""
        quantity, _, class_name = text.partition(":")
        if quantity not in QUANTITIES:
            raise SpecError("task.target", f"QUANTITY[:CLASS], QUANTITY one of "
                            f"{', '.join(QUANTITIES)}", repr(text))  # fmt: skip
        if not class_name and quantity in GRAIN_QUANTITIES:
            bounds = [c for c in classes if is_boundary_class(c)]
            class_name = bounds[0] if len(bounds) == 1 else ""
        if class_name not in classes:
            raise SpecError("task.target", f"a class of the dataset ({', '.join(classes)})",
                            repr(class_name or text), "write QUANTITY:CLASS")  # fmt: skip
        return cls(quantity, classes.index(class_name), class_name)


# --- errors against ground truth --------------------------------------------------------------


@dataclass(frozen=True)
class QuantityError:
    """A quantity on the ground truth and on the prediction of one image, and how far apart;
    for a feature quantity also the distance between the two size distributions."""

    truth: float
    predicted: float
    ks: float = math.nan  # Kolmogorov-Smirnov statistic between the distributions
    wasserstein: float = math.nan  # earth mover's distance, in the quantity's unit
    unit: str = ""
    truth_measurement: Measurement | None = None  # with the distribution behind a feature
    predicted_measurement: Measurement | None = None  # quantity

    @property
    def error(self) -> float:
        return self.predicted - self.truth

    @property
    def absolute_error(self) -> float:
        return abs(self.error)

    @property
    def relative_error(self) -> float:
        """Error over the true value (NaN where the truth is 0 or undefined)."""
        return self.error / abs(self.truth) if self.truth else math.nan


def _weighted_ks(a: Measurement, b: Measurement) -> tuple[float, float]:
    """KS statistic and Wasserstein distance between two weighted feature distributions."""
    from scipy import stats

    ok_a, ok_b = np.isfinite(a.values), np.isfinite(b.values)
    if not ok_a.any() or not ok_b.any():
        return math.nan, math.nan
    va, wa, vb, wb = a.values[ok_a], a.weights[ok_a], b.values[ok_b], b.weights[ok_b]
    grid = np.union1d(va, vb)

    def cdf(v: NDArray[np.float64], w: NDArray[np.float64]) -> NDArray[np.float64]:
        order = np.argsort(v)
        cum = np.cumsum(w[order]) / w.sum()
        return np.concatenate([[0.0], cum])[np.searchsorted(v[order], grid, side="right")]

    ks = float(np.abs(cdf(va, wa) - cdf(vb, wb)).max())
    return ks, float(stats.wasserstein_distance(va, vb, wa, wb))


def compare_many(
    truth: NDArray[np.integer],
    predicted: NDArray[np.integer],
    targets: list[Target],
    scale: Scale,
    ignore_index: int | None = None,
) -> list[QuantityError]:
    """:func:`compare` for several targets, each mask's features measured once per class."""
    wanted = [(t.quantity, t.class_id) for t in targets]
    on_truth = measure_many(truth, wanted, scale, ignore_index)
    on_prediction = measure_many(predicted, wanted, scale, ignore_index)
    out = []
    for target, t, p in zip(targets, on_truth, on_prediction, strict=True):
        distance = _weighted_ks(t, p) if target.quantity in DISTRIBUTIONS else (math.nan, math.nan)
        out.append(QuantityError(t.value, p.value, *distance, t.unit, t, p))
    return out


def compare(
    truth: NDArray[np.integer],
    predicted: NDArray[np.integer],
    target: Target,
    scale: Scale,
    ignore_index: int | None = None,
) -> QuantityError:
    """The target quantity on one image's ground truth and prediction (``ignore_index``: pixels
    an area fraction does not count)."""
    return compare_many(truth, predicted, [target], scale, ignore_index)[0]


def mean_ci(
    values: NDArray[np.float64], n_boot: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean of the finite values with its percentile bootstrap 95% CI (NaN where undefined:
    no value, or one value for the interval)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return math.nan, (math.nan, math.nan)
    if v.size < 2:
        return float(v.mean()), (math.nan, math.nan)
    boot = v[np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(v.mean()), (float(lo), float(hi))


@dataclass(frozen=True)
class ErrorSummary:
    """Bias (mean signed error) and mean absolute error over images, with bootstrap 95% CIs,
    and the spread (standard deviation) of the error; images with an undefined value left out."""

    n_images: int
    bias: float
    bias_ci: tuple[float, float]
    mean_absolute_error: float
    mean_absolute_error_ci: tuple[float, float]
    spread: float


def summarise_errors(
    errors: list[QuantityError], n_boot: int = 2000, seed: int = 0
) -> ErrorSummary:
    """Dataset-level bias and error of a quantity, with percentile bootstrap CIs over images."""
    e = np.array([x.error for x in errors], dtype=float)
    e = e[np.isfinite(e)]
    bias, bias_ci = mean_ci(e, n_boot, seed)
    mae, mae_ci = mean_ci(np.abs(e), n_boot, seed)
    spread = float(e.std(ddof=1)) if e.size > 1 else math.nan
    return ErrorSummary(int(e.size), bias, bias_ci, mae, mae_ci, spread)
