"""Per-point PRDC statistics: the typicality features of Forte (Ganguly et al., ICLR 2025).

Why: Forte scores an input by how it sits among the in-distribution (ID) reference embeddings
and among its own batch, through four per-point statistics derived from k-nearest-neighbour
balls (Naeem et al., ICML 2020, made per point). A detector (GMM, KDE, OCSVM) is then fitted on
these four numbers.

Definitions (k = 5 by default, every comparison STRICT). Reference set R = {r_1..r_m}, scored
set Q = {q_1..q_n}; rho_R(i) is the distance from r_i to its k-th nearest neighbour in R (r_i
itself excluded by index, so an exact duplicate of r_i counts as a neighbour at distance 0);
rho_Q(j) is the same for q_j inside Q. For each query q_j:

- recall_j    = #{i : |r_i - q_j| < rho_Q(j)} / m
- density_j   = #{i : |r_i - q_j| < rho_R(i)} / (k m)
- precision_j = 1 if some i has |r_i - q_j| < rho_R(i), else 0
- coverage_j  = 1 if min_i |r_i - q_j| < rho_Q(j), else 0

The density normalisation 1/(k m) is that of Forte's reference code: for identical
distributions E[density_j] = 1/m (Naeem's set-level density, 1/(k n) times the same double
sum, has expectation 1).

Everything is computed chunk by chunk (``torch.cdist`` of a block of rows against a whole set),
never as a full pairwise matrix; one chunk holds at most about ``_CHUNK_BYTES`` of distances.
The reference set and its radii are computed once at fit time (:meth:`ReferenceSet.build`);
Forte's reference code re-splits the reference set at random at score time, which makes scores
change between calls, and this module does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from matseg.errors import InputError

__all__ = [
    "STATISTICS",
    "ReferenceSet",
    "distance_to_kth_neighbour",
    "kth_neighbour_radii",
    "prdc_statistics",
]

STATISTICS = ("recall", "density", "precision", "coverage")
"""Column order of :func:`prdc_statistics`."""

MARGINS = ("precision_margin", "coverage_margin")
"""Extra columns of :func:`prdc_statistics` with ``margins=True`` (matseg's robust Forte).

precision_j = 1[min_i |r_i - q_j| / rho_R(i) < 1] and coverage_j = 1[min_i |r_i - q_j| /
rho_Q(j) < 1]: the margins are the logs of those two ratios, i.e. the continuous quantities the
indicators threshold. Every point far from the reference has all four PRDC statistics equal to
0, a far-away one and a mildly atypical one alike; the margins keep saying how far.
"""

_CHUNK_BYTES = 256 * 2**20
"""Upper bound on the bytes of one chunk of distances (rows x columns x element size)."""


def _points(name: str, points: object) -> np.ndarray:
    """``points`` as a 2-D array of finite real numbers, or a ValueError naming ``name``."""
    array = np.asarray(points)
    if array.ndim != 2:
        raise InputError(
            f"{name}: expected a 2-D array (points x features), found shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(
            f"{name}: expected real numbers (a float array), found dtype {array.dtype}"
        )
    if array.shape[1] == 0:
        raise InputError(
            f"{name}: expected at least one feature per point, found shape {array.shape}"
        )
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise InputError(f"{name}: expected finite values, found NaN or inf in {bad} row(s)")
    return array


def _check_k(k: object) -> int:
    """``k`` as a positive int, or a ValueError."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k: expected a positive integer, found {k!r}")
    return int(k)


def _check_dims(what: str, expected: int, found: int, against: str) -> None:
    """ValueError when two sets of embeddings differ in their number of features."""
    if expected != found:
        raise InputError(
            f"{what}: expected {expected} features per point (as in {against}), "
            f"found {found}; embed both with the same extractor"
        )


def _tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A torch view of ``array`` in ``dtype`` (no copy when the dtype already matches).

    Read-only arrays (memory maps, frozen caches) are shared too: nothing here writes to them.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def _chunks(n_rows: int, n_cols: int, chunk_size: int, dtype: torch.dtype) -> Iterator[slice]:
    """Row slices of at most ``chunk_size`` rows, capped so rows x n_cols fits ``_CHUNK_BYTES``."""
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int | np.integer)
        or chunk_size < 1
    ):
        raise InputError(f"chunk_size: expected a positive integer, found {chunk_size!r}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = max(1, min(chunk_size, _CHUNK_BYTES // max(1, n_cols * itemsize)))
    for start in range(0, n_rows, rows):
        yield slice(start, min(start + rows, n_rows))


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of rows of ``a`` to rows of ``b`` by matrix multiplication.

    Fast (one GEMM). Written out rather than ``torch.cdist(compute_mode=...mm...)``, whose
    fused kernel rounds differently per CPU; and the square root is NumPy's (IEEE, correctly
    rounded) because torch's vectorised float64 sqrt is not on every CPU (with AVX-512,
    sqrt(2.0) came out 1 ulp low). So for integer data every step is exact and ties stay ties
    on any machine. Squared distances are clamped at 0 before the square root, so cancellation
    never gives NaN, but a point's distance to itself may come out as ~1e-8 instead of 0,
    which is why self-exclusion below is by index, not by value.
    """
    squared = ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)).clamp_min_(0)
    values = squared.numpy()
    np.sqrt(values, out=values)
    return squared


def _kth_smallest(block: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value of each row (ties counted with multiplicity).

    ``topk`` rather than ``kthvalue``: on CPU kthvalue copies the block with int64 indices
    (three times its memory again) and is several times slower for small k.
    """
    return torch.topk(block, k, dim=1, largest=False, sorted=True).values[:, k - 1]


def kth_neighbour_radii(
    points: np.ndarray, k: int = 5, *, chunk_size: int = 2048, dtype: torch.dtype = torch.float64
) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set, itself excluded.

    The point is excluded by its index, so exact duplicates of it count as neighbours at
    distance 0. Needs more than ``k`` points. Returns float64 of shape (n,).
    """
    k = _check_k(k)
    array = _points("points", points)
    n = len(array)
    if n <= k:
        raise InputError(
            f"points: expected more than k={k} points to find a k-th neighbour other than "
            f"the point itself, found {n}"
        )
    x = _tensor(array, dtype)
    radii = np.empty(n, dtype=np.float64)
    with torch.no_grad():
        for rows in _chunks(n, n, chunk_size, dtype):
            block = _distances(x[rows], x)
            local = torch.arange(rows.stop - rows.start)
            block[local, local + rows.start] = torch.inf
            radii[rows] = _kth_smallest(block, k).double().numpy()
    return radii


def distance_to_kth_neighbour(
    points: np.ndarray,
    anchors: np.ndarray,
    k: int = 5,
    *,
    chunk_size: int = 2048,
    dtype: torch.dtype = torch.float64,
) -> np.ndarray:
    """Distance from each point (not itself one of ``anchors``) to its k-th nearest anchor.

    Streaming mode: a single new image gets its rho_Q from a fixed batch of anchors instead of
    from the batch it happens to arrive with. For q outside the anchors, this equals q's k-th
    neighbour radius inside anchors + [q]. Returns float64 of shape (n,).
    """
    k = _check_k(k)
    array = _points("points", points)
    anchor_array = _points("anchors", anchors)
    _check_dims("points", anchor_array.shape[1], array.shape[1], "the anchors")
    if len(anchor_array) < k:
        raise InputError(
            f"anchors: expected at least k={k} anchor points, found {len(anchor_array)}"
        )
    a = _tensor(anchor_array, dtype)
    x = _tensor(array, dtype)
    radii = np.empty(len(array), dtype=np.float64)
    with torch.no_grad():
        for rows in _chunks(len(array), len(anchor_array), chunk_size, dtype):
            block = _distances(x[rows], a)
            radii[rows] = _kth_smallest(block, k).double().numpy()
    return radii


@dataclass(frozen=True, eq=False)
class ReferenceSet:
    """The fixed ID reference embeddings with their k-th neighbour radii, computed once.

    Build it with :meth:`build` at fit time; scoring then never recomputes or re-splits it.
    """

    points: np.ndarray
    radii: np.ndarray
    k: int

    def __post_init__(self) -> None:
        """Check that the radii belong to the points (one per point)."""
        _check_k(self.k)
        if self.points.ndim != 2 or self.radii.shape != (len(self.points),):
            raise InputError(
                f"ReferenceSet: expected one radius per reference point, found points of shape "
                f"{self.points.shape} and radii of shape {self.radii.shape}"
            )

    @classmethod
    def build(
        cls,
        points: np.ndarray,
        k: int = 5,
        chunk_size: int = 2048,
        dtype: torch.dtype = torch.float64,
    ) -> ReferenceSet:
        """Validate ``points`` and cache their k-th neighbour radii (self excluded)."""
        array = _points("reference points", points)
        radii = kth_neighbour_radii(array, k, chunk_size=chunk_size, dtype=dtype)
        return cls(points=array, radii=radii, k=int(k))


def prdc_statistics(
    reference: ReferenceSet,
    queries: np.ndarray,
    query_radii: np.ndarray | None = None,
    *,
    chunk_size: int = 2048,
    dtype: torch.dtype = torch.float64,
    margins: bool = False,
) -> np.ndarray:
    """Per-query [recall, density, precision, coverage] (see ``STATISTICS``), shape (n, 4).

    With ``margins`` two more columns follow (see ``MARGINS``), shape (n, 6).

    Batch mode (``query_radii`` None): rho_Q comes from the k-th neighbour inside ``queries``,
    so a point's recall and coverage depend on which other points were scored with it; score
    the batch you mean to judge, with more than k points. Streaming mode: pass
    ``query_radii`` (e.g. from :func:`distance_to_kth_neighbour` against fixed anchors) and
    each row is scored independently of the others.

    One pass over query chunks: each chunk's distances to the reference are computed once and
    give all four statistics.
    """
    k = reference.k
    q = _points("queries", queries)
    m, dim = reference.points.shape
    _check_dims("queries", dim, q.shape[1], "the reference set")
    n = len(q)
    if query_radii is None:
        if n <= k:
            raise InputError(
                f"queries: expected more than k={k} points in batch mode, found {n}; to score "
                f"fewer, pass query_radii=distance_to_kth_neighbour(queries, anchors, k)"
            )
        q_radii = kth_neighbour_radii(q, k, chunk_size=chunk_size, dtype=dtype)
    else:
        q_radii = np.asarray(query_radii)
        if q_radii.shape != (n,):
            raise InputError(
                f"query_radii: expected shape ({n},) (one radius per query), found {q_radii.shape}"
            )
        if not np.issubdtype(q_radii.dtype, np.number) or not np.isfinite(q_radii).all():
            raise InputError("query_radii: expected finite numbers, found NaN, inf or non-numbers")
        if (q_radii < 0).any():
            raise InputError("query_radii: expected distances >= 0, found a negative value")

    r = _tensor(reference.points, dtype)
    r_radii = _tensor(reference.radii, dtype)
    x = _tensor(q, dtype)
    x_radii = _tensor(q_radii, dtype)
    out = np.empty((n, len(STATISTICS) + (len(MARGINS) if margins else 0)), dtype=np.float64)
    tiny = 1e-12
    with torch.no_grad():
        for rows in _chunks(n, m, chunk_size, dtype):
            block = _distances(x[rows], r)  # (rows, m)
            inside_reference = (block < r_radii).sum(dim=1)  # q_j in r_i's k-NN ball
            inside_query = (block < x_radii[rows, None]).sum(dim=1)  # r_i in q_j's k-NN ball
            nearest = block.min(dim=1).values
            out[rows, 0] = (inside_query.double() / m).numpy()
            out[rows, 1] = (inside_reference.double() / (k * m)).numpy()
            out[rows, 2] = (inside_reference > 0).double().numpy()
            out[rows, 3] = (nearest < x_radii[rows]).double().numpy()
            if margins:
                ratio = (block / r_radii.clamp_min(tiny)).min(dim=1).values
                out[rows, 4] = torch.log(ratio.clamp_min(tiny)).double().numpy()
                own = nearest / x_radii[rows].clamp_min(tiny)
                out[rows, 5] = torch.log(own.clamp_min(tiny)).double().numpy()
    return out
