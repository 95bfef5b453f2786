"""Out-of-distribution detectors over embeddings, scikit-learn outlier detectors exactly.

Every detector is a ``sklearn.base.OutlierMixin`` + ``BaseEstimator``: parameters only in
``__init__`` (stored unchanged, so ``get_params`` / ``set_params`` / ``clone`` work), fitted state
only in ``fit``, in trailing-underscore attributes. ``score_samples(X)`` is a TYPICALITY score
(higher = more in-distribution), ``decision_function(X) = score_samples(X) - offset_`` and
``predict(X)`` is +1 (inlier, ``decision_function >= 0``) or -1 (outlier). ``offset_`` is fixed at
fit time from ``accept`` (default 0.95, the role of LocalOutlierFactor's ``contamination``): the
:func:`~matseg.qc.evaluation.acceptance_threshold` that accepts ``accept`` of the fit-time
in-distribution scores (which scores, each class's docstring says). One registry,
:data:`DETECTORS`, and :func:`make_detector`.

``X`` is either a 2-D array (n, d), the scikit-learn contract, or the named embeddings of
several extractors, ``{name: (n, d_name) array}`` with rows aligned (the same patches). A dict is
stacked into one array in its order; the column blocks are remembered in ``extractors_`` (name,
width), and an array is one block named ``"X"``. Scoring takes either form: a dict must name the
fitted extractors with their fitted widths (it is reordered to the fitted order), an array must
have ``n_features_in_`` columns.

- ``forte``: Forte (Ganguly et al., ICLR 2025). Per-point [recall, density, precision, coverage]
  of each extractor against a reference set, concatenated; a density model (GMM, KDE or one-class
  SVM) fitted on the statistics of a separate in-distribution fit set; the score is its
  log-density (the SVM's decision value).
- ``mahalanobis``: distance to a single Gaussian (Ledoit-Wolf shrunk covariance), negated.
- ``knn``: Sun et al. 2022, distance to the k-th nearest in-distribution neighbour of the
  L2-normalised embedding, negated.
- ``ensemble``: the mean of its members' scores, each first turned into its ID percentile (the
  fraction of held-out in-distribution scores below it), so scales do not matter.

Several extractors: the baselines (:class:`PercentileAverage` around :class:`Mahalanobis` or
:class:`KNNDistance`) average the per-extractor scores after the same percentile transform;
Forte concatenates its statistics as the paper does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy.sparse import issparse
from scipy.stats import gaussian_kde
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.covariance import LedoitWolf
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import OneClassSVM
from sklearn.utils.validation import check_is_fitted, validate_data

from matseg.errors import InputError
from matseg.qc.evaluation import acceptance_threshold
from matseg.qc.typicality import (
    ReferenceSet,
    distance_to_kth_neighbour,
    kth_neighbour_radii,
    prdc_statistics,
)

Embeddings = dict[str, np.ndarray]
"""Extractor name -> (n, d) embeddings, rows aligned to the same patches."""

Blocks = list[tuple[str, np.ndarray]]
"""The column blocks of a stacked input, one (extractor name, (n, width) array) per extractor."""

PAPER_COMPONENTS = (1, 2, 4, 8, 16, 32, 64)  # the Forte code's BIC grid
OCSVM_NUS = (0.01, 0.05, 0.1, 0.2, 0.5)
ARRAY_BLOCK = "X"  # the name of the one block of a plain-array input
_DTYPES = [np.float64, np.float32]  # float32 stays float32 (as before); anything else -> float64


def check_embeddings(
    emb: Mapping[str, Any], where: str, expected: Mapping[str, int] | None = None
) -> int:
    """The row count of named embeddings; rows must align, values be finite, dims as fitted.

    ``expected`` (extractor name -> fitted width) also demands exactly the fitted extractors.
    """
    if not emb:
        raise InputError(f"{where}: expected embeddings of at least one extractor, found none")
    arrays = {name: np.asarray(x) for name, x in emb.items()}
    for name, x in arrays.items():
        if x.ndim != 2:
            raise InputError(
                f"{where}: expected a 2-D (n, d) array of embeddings for {name}, "
                f"found shape {x.shape}"
            )
    counts = {name: len(x) for name, x in arrays.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"{where}: expected the same rows for every extractor, found {counts}")
    for name, x in arrays.items():
        if x.dtype.kind not in "biuf":
            raise InputError(f"{where}: expected real numbers for {name}, found dtype {x.dtype}")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(axis=1).sum())
            raise InputError(
                f"{where}: expected finite embeddings for {name}, "
                f"found NaN or inf in {bad} of {len(x)} rows"
            )
        if expected is not None:
            if name not in expected:
                raise InputError(f"{where}: extractor {name} was not fitted ({sorted(expected)})")
            if expected[name] != x.shape[1]:
                raise InputError(
                    f"{where}: expected dimension {expected[name]} for {name}, found {x.shape[1]}"
                )
    if expected is not None and set(arrays) != set(expected):
        raise InputError(
            f"{where}: expected embeddings of every fitted extractor {sorted(expected)}, "
            f"found {sorted(arrays)}"
        )
    return next(iter(counts.values()))


def _percentile_of(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Fraction of the sorted reference scores strictly below each score (ties count half)."""
    below = np.searchsorted(reference, scores, side="left")
    upto = np.searchsorted(reference, scores, side="right")
    return (below + upto) / (2.0 * len(reference))


def _calibration_split(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (held out for calibration, the rest) of ``n`` rows: a seeded permutation."""
    order = np.random.default_rng(seed).permutation(n)
    held = order[: max(1, int(n * share))]
    return held, order[len(held) :]


def _mean_percentile(references: list[np.ndarray], scores: list[np.ndarray]) -> np.ndarray:
    """Each detector's scores as their percentile among its held-out ID scores, averaged."""
    parts = [_percentile_of(ref, s) for ref, s in zip(references, scores, strict=True)]
    return np.mean(parts, axis=0)


class _Detector(OutlierMixin, BaseEstimator):
    """What every detector shares: the two input forms, the column blocks, offset_ and predict.

    Subclasses define ``__init__`` (with ``accept``), ``fit`` (which sets ``offset_``) and
    ``score_samples``.
    """

    accept: float

    def _where(self, method: str) -> str:
        return f"{type(self).__name__}.{method}"

    def _check_input(self, X: Any, method: str, *, reset: bool) -> np.ndarray:
        """``X`` (array or named embeddings) as one validated 2-D array; at fit, its blocks.

        A dict is checked with :func:`check_embeddings` (against the fitted extractors when
        scoring) and stacked in the fitted order; then scikit-learn's ``validate_data`` checks
        the array and sets (``reset``) or checks ``n_features_in_``.
        """
        where = self._where(method)
        blocks: tuple[tuple[str, int], ...] | None = None
        if isinstance(X, Mapping) and not issparse(X):  # a dok_matrix is a dict too
            check_embeddings(X, where, None if reset else dict(self.extractors_))
            names = list(X) if reset else [name for name, _ in self.extractors_]
            parts = [np.asarray(X[name]) for name in names]
            blocks = tuple((name, part.shape[1]) for name, part in zip(names, parts, strict=True))
            X = parts[0] if len(parts) == 1 else np.hstack(parts)
        x = validate_data(self, X, reset=reset, dtype=_DTYPES)
        if reset:
            self.extractors_ = blocks or ((ARRAY_BLOCK, x.shape[1]),)
        return x

    def _blocks(self, x: np.ndarray) -> Blocks:
        """The fitted extractors' column blocks of a validated array (each C-contiguous)."""
        if len(self.extractors_) == 1:
            return [(self.extractors_[0][0], x)]
        out, start = [], 0
        for name, width in self.extractors_:
            out.append((name, np.ascontiguousarray(x[:, start : start + width])))
            start += width
        return out

    def _named(self, x: np.ndarray) -> np.ndarray | Embeddings:
        """``x`` in the form to hand to inner estimators: the array, or a dict if several."""
        if len(self.extractors_) == 1:
            return x
        return dict(self._blocks(x))

    def score_samples(self, X: Any) -> np.ndarray:
        """Typicality per row (higher = more in-distribution); every detector defines it."""
        raise NotImplementedError

    def decision_function(self, X: Any) -> np.ndarray:
        """Typicality shifted by ``offset_``: negative for outliers, ``>= 0`` for inliers."""
        check_is_fitted(self)
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for an inlier (``decision_function >= 0``), -1 for an outlier."""
        return np.where(self.decision_function(X) >= 0, 1, -1)


# --- baselines ---------------------------------------------------------------------------------


class Mahalanobis(_Detector):
    """Negative squared Mahalanobis distance to one Gaussian (Lee et al. 2018 style).

    The covariance is Ledoit-Wolf shrunk: embeddings often have more dimensions than patches.
    Several extractors are one feature space here (their columns stacked); the registry's
    ``mahalanobis`` wraps it in :class:`PercentileAverage` instead. ``offset_`` comes from the
    training scores.
    """

    def __init__(self, accept: float = 0.95) -> None:
        self.accept = accept

    def fit(self, X: Any, y: None = None) -> Mahalanobis:
        """Fit the shrunk Gaussian on in-distribution ``X``."""
        x = self._check_input(X, "fit", reset=True)
        lw = LedoitWolf().fit(x)
        self.location_, self.precision_ = lw.location_, lw.precision_
        self.offset_ = acceptance_threshold(self._score(x), self.accept)
        return self

    def _score(self, x: np.ndarray) -> np.ndarray:
        d = x - self.location_
        return -np.einsum("ij,jk,ik->i", d, self.precision_, d)

    def score_samples(self, X: Any) -> np.ndarray:
        """Minus the squared Mahalanobis distance of each row to the fitted Gaussian."""
        check_is_fitted(self)
        return self._score(self._check_input(X, "score_samples", reset=False))


class KNNDistance(_Detector):
    """Negative distance to the k-th nearest ID neighbour of L2-normalised embeddings (Sun 2022).

    Several extractors are one feature space here (columns stacked); the registry's ``knn``
    wraps it in :class:`PercentileAverage`. ``offset_`` comes from the training scores, where
    each training point is its own nearest neighbour (so they are slightly optimistic).
    """

    def __init__(self, k: int = 5, accept: float = 0.95) -> None:
        self.k = k
        self.accept = accept

    @staticmethod
    def _normalise(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def fit(self, X: Any, y: None = None) -> KNNDistance:
        """Index the normalised in-distribution rows (at least ``k`` of them)."""
        x = self._check_input(X, "fit", reset=True)
        if len(x) < self.k:
            raise InputError(
                f"{self._where('fit')}: expected at least k={self.k} ID points, "
                f"found n_samples={len(x)}"
            )
        self.neighbours_ = NearestNeighbors(n_neighbors=self.k).fit(self._normalise(x))
        self.offset_ = acceptance_threshold(self._score(x), self.accept)
        return self

    def _score(self, x: np.ndarray) -> np.ndarray:
        dist, _ = self.neighbours_.kneighbors(self._normalise(x), n_neighbors=self.k)
        return -dist[:, -1]

    def score_samples(self, X: Any) -> np.ndarray:
        """Minus the distance of each normalised row to its k-th nearest training row."""
        check_is_fitted(self)
        return self._score(self._check_input(X, "score_samples", reset=False))


class PercentileAverage(_Detector):
    """A detector per extractor (a clone of ``base``), their scores as ID percentiles, averaged.

    Several extractors: a seeded ``calibration`` share of the rows is held out, ``base`` is
    fitted per extractor on the rest, and each extractor's score becomes its percentile among the
    held-out rows' scores (so scales do not matter); ``offset_`` comes from the held-out rows'
    averaged percentiles. One extractor (or a plain array): the raw score of ``base`` fitted on
    all rows (so thresholds and AUROC use the detector's own scale), ``offset_`` from the
    training scores. ``held_out_``: the indices of the held-out rows (none with one extractor).
    """

    def __init__(
        self, base: Any, calibration: float = 1 / 3, seed: int = 0, accept: float = 0.95
    ) -> None:
        self.base = base
        self.calibration = calibration
        self.seed = seed
        self.accept = accept

    def fit(self, X: Any, y: None = None) -> PercentileAverage:
        """Fit ``base`` per extractor; with several, calibrate percentiles on held-out rows."""
        x = self._check_input(X, "fit", reset=True)
        blocks = self._blocks(x)
        if len(blocks) == 1:
            self.held_out_ = np.arange(0)
            self.models_ = [clone(self.base).fit(x)]
            self.reference_scores_: list[np.ndarray] = []
            self.offset_ = acceptance_threshold(self.models_[0].score_samples(x), self.accept)
            return self
        held, rest = _calibration_split(len(x), self.calibration, self.seed)
        self.held_out_ = held
        self.models_ = [clone(self.base).fit(b[rest]) for _, b in blocks]
        held_scores = [
            m.score_samples(b[held]) for m, (_, b) in zip(self.models_, blocks, strict=True)
        ]
        self.reference_scores_ = [np.sort(s) for s in held_scores]
        calibrated = _mean_percentile(self.reference_scores_, held_scores)
        self.offset_ = acceptance_threshold(calibrated, self.accept)
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """The raw score (one extractor) or the mean per-extractor ID percentile (several)."""
        check_is_fitted(self)
        blocks = self._blocks(self._check_input(X, "score_samples", reset=False))
        if len(blocks) == 1:
            return self.models_[0].score_samples(blocks[0][1])
        scores = [m.score_samples(b) for m, (_, b) in zip(self.models_, blocks, strict=True)]
        return _mean_percentile(self.reference_scores_, scores)


# --- Forte ------------------------------------------------------------------------------------


Density = Literal["gmm", "kde", "ocsvm"]


class Forte(_Detector):
    """Forte typicality: per-point PRDC statistics, then a density model of them.

    Protocol (the paper's): the ID embeddings are permuted once with ``seed`` (one permutation for
    every extractor, so rows stay aligned); ``holdout`` of them are kept out (for calibration and
    evaluation, returned by :meth:`split`), the rest halved into the reference set R and the fit
    set F. R and its k-NN radii are fixed at fit time. F's statistics (its own radii computed
    within F) train the density model. Both R and F need more than ``k`` points (the KDE also
    more points in F than statistic columns), else ``fit`` raises a ValueError.

    ``offset_`` comes from the scores of the held-out rows (``held_out_``, scored like any
    query, as one batch), or, with ``holdout=0``, from the density model's scores of F's
    statistics.

    Scoring modes (recall and coverage use the radius of a query inside the scored set):
    ``streaming`` (default) takes each query's radius from its k-th nearest point of F, so a
    score depends on the image alone and matches the scale the density model was fitted on;
    ``batch`` takes it inside the scored batch, as the paper does with its fused ID + OOD batch,
    so scores change with the batch (and recall scales like k / batch size).

    ``standardise`` (default on) z-scores each statistic column with the fit set's mean and std
    (floored at ``min_std``): density and recall are tiny numbers and precision / coverage are
    often constant on ID data, which makes an unscaled full-covariance GMM degenerate.
    ``components``: ``bic`` (1..``max_components`` by BIC), ``paper`` (BIC over 1, 2, 4, ... 64),
    or a fixed number.

    ``margins`` (default on, matseg's robust variant) adds two continuous columns per extractor,
    the log distance ratios that precision and coverage threshold (see ``typicality.MARGINS``):
    without them every far-away point has all-zero statistics, exactly like a mildly atypical
    in-distribution point, and ties with it. ``forte-paper`` in the registry is the faithful
    method: four raw statistics, no standardisation, BIC over the paper's component grid.
    """

    def __init__(
        self,
        k: int = 5,
        density: Density = "gmm",
        components: str | int = "bic",
        max_components: int = 8,
        kde_bandwidth: Literal["scott", "silverman"] = "scott",
        standardise: bool = True,
        min_std: float = 0.05,
        reg_covar: float = 1e-3,
        holdout: float = 1 / 3,
        mode: Literal["streaming", "batch"] = "streaming",
        margins: bool = True,
        seed: int = 0,
        accept: float = 0.95,
    ) -> None:
        self.k = k
        self.density = density
        self.components = components
        self.max_components = max_components
        self.kde_bandwidth = kde_bandwidth
        self.standardise = standardise
        self.min_std = min_std
        self.reg_covar = reg_covar
        self.holdout = holdout
        self.mode = mode
        self.margins = margins
        self.seed = seed
        self.accept = accept

    def split(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices (held out, reference R, fit F) of ``n`` ID points: one seeded permutation."""
        order = np.random.default_rng(self.seed).permutation(n)
        n_hold = round(n * self.holdout)
        rest = order[n_hold:]
        half = len(rest) // 2
        return order[:n_hold], rest[:half], rest[half:]

    def fit(self, X: Any, y: None = None) -> Forte:
        """Fix R and its radii, fit the density model on F's statistics, set ``offset_``."""
        x = self._check_input(X, "fit", reset=True)
        where, n = self._where("fit"), len(x)
        if self.mode not in ("streaming", "batch"):
            raise InputError(f"{where}: mode: expected streaming or batch, found {self.mode!r}")
        held, ref, fit = self.split(n)
        if min(len(ref), len(fit)) <= self.k:
            raise InputError(
                f"{where}: expected more than k={self.k} points in the reference and fit sets, "
                f"found {len(ref)} and {len(fit)} from n_samples={n} ID points "
                "(use more or smaller patches)"
            )
        if self.mode == "batch" and 0 < len(held) <= self.k:
            raise InputError(
                f"{where}: expected more than k={self.k} held-out points to score as one batch "
                f"(mode='batch'), found {len(held)}; raise holdout or use more points"
            )
        blocks = self._blocks(x)
        self.held_out_ = held
        self.references_ = {name: ReferenceSet.build(b[ref], self.k) for name, b in blocks}
        self.anchors_ = {name: b[fit] for name, b in blocks}
        stats = self._statistics([(name, b[fit]) for name, b in blocks], within=True)
        self.column_mean_ = stats.mean(axis=0)
        self.column_std_ = np.maximum(stats.std(axis=0), self.min_std)
        z = self._scale(stats)
        self.model_ = self._fit_density(z)
        if len(held):
            z = self._scale(self._statistics([(name, b[held]) for name, b in blocks]))
        self.offset_ = acceptance_threshold(self._log_density(z), self.accept)
        return self

    def _statistics(self, blocks: Blocks, within: bool = False) -> np.ndarray:
        parts = []
        for name, x in blocks:
            if within or self.mode == "batch":
                radii = kth_neighbour_radii(x, self.k)  # inside the scored set itself
            else:
                radii = distance_to_kth_neighbour(x, self.anchors_[name], self.k)
            stats = prdc_statistics(self.references_[name], x, radii, margins=self.margins)
            parts.append(stats)
        return np.concatenate(parts, axis=1)

    def _scale(self, stats: np.ndarray) -> np.ndarray:
        if not self.standardise:
            return stats
        return (stats - self.column_mean_) / self.column_std_

    def _fit_density(self, z: np.ndarray) -> Any:
        if self.density == "gmm":
            return self._fit_gmm(z)
        if self.density == "kde":
            if len(z) <= z.shape[1]:
                raise InputError(
                    f"{self._where('fit')}: expected more fit-set points than statistic columns "
                    f"({z.shape[1]}) for density='kde', found {len(z)}; use more points"
                )
            jitter = np.random.default_rng(self.seed).normal(0, 1e-6, z.shape)
            return gaussian_kde((z + jitter).T, bw_method=self.kde_bandwidth)  # jitter: rank
        if self.density == "ocsvm":
            return self._fit_ocsvm(z)
        raise InputError(f"forte.density: expected gmm, kde or ocsvm, found {self.density!r}")

    def _fit_gmm(self, z: np.ndarray) -> GaussianMixture:
        if isinstance(self.components, int):
            grid: tuple[int, ...] = (self.components,)
        elif self.components == "paper":
            grid = PAPER_COMPONENTS
        elif self.components == "bic":
            grid = tuple(range(1, self.max_components + 1))
        else:
            raise InputError(
                f"forte.components: expected bic, paper or a number, found {self.components!r}"
            )
        best, best_bic = None, np.inf
        for c in grid:
            if c > len(z):
                break
            gmm = GaussianMixture(
                c, covariance_type="full", reg_covar=self.reg_covar, random_state=self.seed
            ).fit(z)
            bic = gmm.bic(z)
            if bic < best_bic:
                best, best_bic = gmm, bic
        if best is None:
            raise InputError(
                f"forte.components: expected at most {len(z)} components (the fit set's size), "
                f"found {grid[0]}"
            )
        self.n_components_ = best.n_components
        return best

    def _fit_ocsvm(self, z: np.ndarray) -> OneClassSVM:
        """nu from a grid by the acceptance of a held-out half of F closest to 1 - nu.

        (The reference code picks the nu with the highest training acceptance, which always
        favours the smallest nu.)
        """
        order = np.random.default_rng(self.seed).permutation(len(z))
        a, b = z[order[: len(z) // 2]], z[order[len(z) // 2 :]]
        best_nu, best_gap = OCSVM_NUS[0], np.inf
        for nu in OCSVM_NUS:
            accepted = (OneClassSVM(nu=nu, gamma="scale").fit(a).predict(b) == 1).mean()
            gap = abs(accepted - (1 - nu))
            if gap < best_gap:
                best_nu, best_gap = nu, gap
        self.nu_ = best_nu
        return OneClassSVM(nu=best_nu, gamma="scale").fit(z)

    def _log_density(self, z: np.ndarray) -> np.ndarray:
        if self.density == "gmm":
            return self.model_.score_samples(z)
        if self.density == "kde":
            kde = self.model_
            if not kde.dataset.flags.writeable:
                # A read-only (e.g. memory-mapped) fitted model: scipy's Cython kernel needs
                # writable arrays, and the KDE rebuilt from the same points is the same one.
                kde = gaussian_kde(np.array(kde.dataset), bw_method=self.kde_bandwidth)
            return kde.logpdf(z.T)
        return self.model_.decision_function(z)

    def statistics(self, X: Any) -> np.ndarray:
        """The raw [recall, density, precision, coverage (, margins)] x extractors per query."""
        check_is_fitted(self)
        x = self._check_input(X, "statistics", reset=False)
        return self._statistics(self._blocks(x))

    def score_samples(self, X: Any) -> np.ndarray:
        """The density model's log-density (the SVM's decision value) of the statistics."""
        return self._log_density(self._scale(self.statistics(X)))


# --- ensemble ----------------------------------------------------------------------------------


class Ensemble(_Detector):
    """Mean ID percentile of its members' scores, calibrated on a held-out share of the ID data.

    ``members`` are detectors (unfitted templates, never changed): ``fit`` holds out a seeded
    ``calibration`` share of the rows, fits a clone of each member on the rest (``members_``)
    and turns each member's score into its percentile among the held-out rows' scores.
    ``offset_`` comes from the held-out rows' ensemble scores (``held_out_``: their indices).
    Members receive the named embeddings when there are several extractors, else the array.
    """

    def __init__(
        self,
        members: Sequence[Any],
        calibration: float = 1 / 3,
        seed: int = 0,
        accept: float = 0.95,
    ) -> None:
        self.members = members
        self.calibration = calibration
        self.seed = seed
        self.accept = accept

    def fit(self, X: Any, y: None = None) -> Ensemble:
        """Fit clones of the members on part of ``X``, calibrate on the rest."""
        x = self._check_input(X, "fit", reset=True)
        where, n = self._where("fit"), len(x)
        if not self.members:
            raise InputError(f"{where}: members: expected at least one detector, found none")
        held, rest = _calibration_split(n, self.calibration, self.seed + 1)
        if not len(rest):
            raise InputError(
                f"{where}: expected ID points both to calibrate on and to fit the members on, "
                f"found n_samples={n}"
            )
        self.held_out_ = held
        train, calib = self._named(x[rest]), self._named(x[held])
        self.members_ = [clone(member).fit(train) for member in self.members]
        held_scores = [m.score_samples(calib) for m in self.members_]
        self.reference_scores_ = [np.sort(s) for s in held_scores]
        calibrated = _mean_percentile(self.reference_scores_, held_scores)
        self.offset_ = acceptance_threshold(calibrated, self.accept)
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """The members' mean ID percentile."""
        check_is_fitted(self)
        data = self._named(self._check_input(X, "score_samples", reset=False))
        return _mean_percentile(
            self.reference_scores_, [m.score_samples(data) for m in self.members_]
        )


# --- registry ----------------------------------------------------------------------------------


def _forte(seed: int = 0, **options: Any) -> Forte:
    return Forte(seed=seed, **options)


def _forte_paper(seed: int = 0, **options: Any) -> Forte:
    """The paper's method: four raw statistics, no standardisation, the paper's BIC grid."""
    return Forte(
        seed=seed, margins=False, standardise=False, components="paper", reg_covar=1e-6, **options
    )


def _forte_kde(seed: int = 0, **options: Any) -> Forte:
    return Forte(density="kde", seed=seed, **options)


def _forte_ocsvm(seed: int = 0, **options: Any) -> Forte:
    return Forte(density="ocsvm", seed=seed, **options)


def _mahalanobis(seed: int = 0, accept: float = 0.95, **ignored: Any) -> PercentileAverage:
    """Options other than ``accept`` (``k``, ...) are ignored: one set fits every detector."""
    return PercentileAverage(Mahalanobis(), seed=seed, accept=accept)


def _knn(seed: int = 0, k: int = 5, accept: float = 0.95, **ignored: Any) -> PercentileAverage:
    return PercentileAverage(KNNDistance(k=k), seed=seed, accept=accept)


def _ensemble(seed: int = 0, k: int = 5, accept: float = 0.95, **ignored: Any) -> Ensemble:
    members = [Forte(k=k, holdout=0.0, seed=seed), PercentileAverage(KNNDistance(k=k), seed=seed)]
    return Ensemble(members, seed=seed, accept=accept)


DetectorFactory = Callable[..., _Detector]

DETECTORS: dict[str, DetectorFactory] = {
    "forte": _forte,
    "forte-paper": _forte_paper,
    "forte-kde": _forte_kde,
    "forte-ocsvm": _forte_ocsvm,
    "mahalanobis": _mahalanobis,
    "knn": _knn,
    "ensemble": _ensemble,
}
"""Detector name -> factory ``(seed=..., **options) -> unfitted detector``."""


def make_detector(name: str, seed: int = 0, **options: Any) -> Any:
    """A fresh, unfitted detector by registry name."""
    if name not in DETECTORS:
        raise InputError(f"qc detector: expected one of {', '.join(DETECTORS)}, found {name!r}")
    return DETECTORS[name](seed=seed, **options)
