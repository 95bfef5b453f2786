"""Out-of-distribution detectors over embeddings, shaped like scikit-learn estimators.

Every detector takes ``Embeddings`` (extractor name -> (n, d) array, rows aligned to the same
patches), has ``fit(id_embeddings)`` and ``score_samples(embeddings)`` returning a TYPICALITY
score (higher = more in-distribution), and keeps its fitted state in trailing-underscore
attributes. One registry, :data:`DETECTORS`.

- ``forte``: Forte (Ganguly et al., ICLR 2025). Per-point [recall, density, precision, coverage]
  of each extractor against a reference set, concatenated; a density model (GMM, KDE or one-class
  SVM) fitted on the statistics of a separate in-distribution fit set; the score is its
  log-density (the SVM's decision value).
- ``mahalanobis``: distance to a single Gaussian (Ledoit-Wolf shrunk covariance), negated.
- ``knn``: Sun et al. 2022, distance to the k-th nearest in-distribution neighbour of the
  L2-normalised embedding, negated.
- ``ensemble``: the mean of its members' scores, each first turned into its ID percentile (the
  fraction of held-out in-distribution scores below it), so scales do not matter.

Several extractors: the baselines average the per-extractor scores after the same percentile
transform; Forte concatenates its statistics as the paper does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import gaussian_kde
from sklearn.covariance import LedoitWolf
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import OneClassSVM

from matseg.errors import InputError
from matseg.qc.typicality import (
    ReferenceSet,
    distance_to_kth_neighbour,
    kth_neighbour_radii,
    prdc_statistics,
)

Embeddings = dict[str, np.ndarray]

PAPER_COMPONENTS = (1, 2, 4, 8, 16, 32, 64)  # the Forte code's BIC grid
OCSVM_NUS = (0.01, 0.05, 0.1, 0.2, 0.5)


def check_embeddings(emb: Embeddings, where: str, expected: Embeddings | None = None) -> int:
    """Rows must align across extractors (same patches); dims must match the fitted ones."""
    if not emb:
        raise InputError(f"{where}: expected embeddings of at least one extractor, found none")
    counts = {name: len(x) for name, x in emb.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"{where}: expected the same rows for every extractor, found {counts}")
    for name, x in emb.items():
        if x.ndim != 2 or not np.isfinite(x).all():
            raise InputError(
                f"{where}: expected finite (n, d) embeddings for {name}, found {x.shape}"
            )
        if expected is not None:
            if name not in expected:
                raise InputError(f"{where}: extractor {name} was not fitted ({sorted(expected)})")
            if expected[name].shape[1] != x.shape[1]:
                raise InputError(
                    f"{where}: expected dimension {expected[name].shape[1]} for {name}, "
                    f"found {x.shape[1]}"
                )
    return next(iter(counts.values()))


def _percentile_of(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Fraction of the sorted reference scores strictly below each score (ties count half)."""
    below = np.searchsorted(reference, scores, side="left")
    upto = np.searchsorted(reference, scores, side="right")
    return (below + upto) / (2.0 * len(reference))


# --- baselines ---------------------------------------------------------------------------------


@dataclass
class Mahalanobis:
    """Negative squared Mahalanobis distance to one Gaussian per extractor (Lee et al. 2018 style).

    The covariance is Ledoit-Wolf shrunk: embeddings often have more dimensions than patches.
    """

    models_: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def fit(self, emb: Embeddings) -> Mahalanobis:
        check_embeddings(emb, "mahalanobis.fit")
        self.models_ = {}
        for name, x in emb.items():
            lw = LedoitWolf().fit(x)
            self.models_[name] = (lw.location_, lw.precision_)
        return self

    def score_extractor(self, name: str, x: np.ndarray) -> np.ndarray:
        mean, precision = self.models_[name]
        d = x - mean
        return -np.einsum("ij,jk,ik->i", d, precision, d)


@dataclass
class KNNDistance:
    """Negative distance to the k-th nearest ID neighbour of L2-normalised embeddings (Sun 2022)."""

    k: int = 5
    models_: dict[str, NearestNeighbors] = field(default_factory=dict)

    @staticmethod
    def _normalise(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def fit(self, emb: Embeddings) -> KNNDistance:
        n = check_embeddings(emb, "knn.fit")
        if n < self.k:
            raise InputError(f"knn.fit: expected at least k={self.k} ID points, found {n}")
        self.models_ = {
            name: NearestNeighbors(n_neighbors=self.k).fit(self._normalise(x))
            for name, x in emb.items()
        }
        return self

    def score_extractor(self, name: str, x: np.ndarray) -> np.ndarray:
        dist, _ = self.models_[name].kneighbors(self._normalise(x), n_neighbors=self.k)
        return -dist[:, -1]


class _PerExtractor:
    """A baseline over several extractors: per-extractor scores as ID percentiles, averaged.

    One extractor: the raw score (so thresholds and AUROC use the detector's own scale).
    """

    def __init__(self, base: Mahalanobis | KNNDistance, calibration: float = 1 / 3, seed: int = 0):
        self.base = base
        self.calibration = calibration
        self.seed = seed
        self.reference_scores_: dict[str, np.ndarray] = {}

    def fit(self, emb: Embeddings) -> _PerExtractor:
        n = check_embeddings(emb, f"{type(self.base).__name__}.fit")
        self.dims_ = {name: x[:0] for name, x in emb.items()}  # shapes only
        if len(emb) == 1:
            self.base.fit(emb)
            return self
        order = np.random.default_rng(self.seed).permutation(n)
        held = order[: max(1, int(n * self.calibration))]
        rest = order[len(held) :]
        self.base.fit({name: x[rest] for name, x in emb.items()})
        self.reference_scores_ = {
            name: np.sort(self.base.score_extractor(name, x[held])) for name, x in emb.items()
        }
        return self

    def score_samples(self, emb: Embeddings) -> np.ndarray:
        check_embeddings(emb, "score_samples", self.dims_)
        if len(emb) == 1:
            name, x = next(iter(emb.items()))
            return self.base.score_extractor(name, x)
        parts = [
            _percentile_of(self.reference_scores_[name], self.base.score_extractor(name, x))
            for name, x in emb.items()
        ]
        return np.mean(parts, axis=0)


# --- Forte ------------------------------------------------------------------------------------


Density = Literal["gmm", "kde", "ocsvm"]


@dataclass
class Forte:
    """Forte typicality: per-point PRDC statistics, then a density model of them.

    Protocol (the paper's): the ID embeddings are permuted once with ``seed`` (one permutation for
    every extractor, so rows stay aligned); ``holdout`` of them are kept out (for calibration and
    evaluation, returned by :meth:`split`), the rest halved into the reference set R and the fit
    set F. R and its k-NN radii are fixed at fit time. F's statistics (its own radii computed
    within F) train the density model.

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

    k: int = 5
    density: Density = "gmm"
    components: str | int = "bic"
    max_components: int = 8
    kde_bandwidth: Literal["scott", "silverman"] = "scott"
    standardise: bool = True
    min_std: float = 0.05
    reg_covar: float = 1e-3
    holdout: float = 1 / 3
    mode: Literal["streaming", "batch"] = "streaming"
    margins: bool = True
    seed: int = 0

    def split(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices (held out, reference R, fit F) of ``n`` ID points: one seeded permutation."""
        order = np.random.default_rng(self.seed).permutation(n)
        n_hold = round(n * self.holdout)
        rest = order[n_hold:]
        half = len(rest) // 2
        return order[:n_hold], rest[:half], rest[half:]

    def fit(self, emb: Embeddings) -> Forte:
        n = check_embeddings(emb, "forte.fit")
        held, ref, fit = self.split(n)
        if min(len(ref), len(fit)) <= self.k:
            raise InputError(
                f"forte.fit: expected more than k={self.k} points in the reference and fit sets, "
                f"found {len(ref)} and {len(fit)} from {n} ID points (use more or smaller patches)"
            )
        self.held_out_ = held
        self.references_ = {name: ReferenceSet.build(x[ref], self.k) for name, x in emb.items()}
        self.anchors_ = {name: x[fit] for name, x in emb.items()}
        stats = self._statistics({name: x[fit] for name, x in emb.items()}, within=True)
        self.column_mean_ = stats.mean(axis=0)
        self.column_std_ = np.maximum(stats.std(axis=0), self.min_std)
        z = self._scale(stats)
        self.model_ = self._fit_density(z)
        return self

    def _statistics(self, emb: Embeddings, within: bool = False) -> np.ndarray:
        parts = []
        for name, x in emb.items():
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
        assert best is not None
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

    def statistics(self, emb: Embeddings) -> np.ndarray:
        """The raw [recall, density, precision, coverage (, margins)] x extractors per query."""
        check_embeddings(emb, "forte.statistics", self.anchors_)
        return self._statistics(emb)

    def score_samples(self, emb: Embeddings) -> np.ndarray:
        z = self._scale(self.statistics(emb))
        if self.density == "gmm":
            return self.model_.score_samples(z)
        if self.density == "kde":
            return self.model_.logpdf(z.T)
        return self.model_.decision_function(z)


# --- ensemble ----------------------------------------------------------------------------------


@dataclass
class Ensemble:
    """Mean ID percentile of its members' scores (calibrated on a held-out third of the ID data)."""

    members: list[Any]
    calibration: float = 1 / 3
    seed: int = 0

    def fit(self, emb: Embeddings) -> Ensemble:
        n = check_embeddings(emb, "ensemble.fit")
        order = np.random.default_rng(self.seed + 1).permutation(n)
        held = order[: max(1, int(n * self.calibration))]
        rest = order[len(held) :]
        train = {name: x[rest] for name, x in emb.items()}
        calib = {name: x[held] for name, x in emb.items()}
        self.reference_scores_ = []
        for member in self.members:
            member.fit(train)
            self.reference_scores_.append(np.sort(member.score_samples(calib)))
        return self

    def score_samples(self, emb: Embeddings) -> np.ndarray:
        parts = [
            _percentile_of(ref, m.score_samples(emb))
            for m, ref in zip(self.members, self.reference_scores_, strict=True)
        ]
        return np.mean(parts, axis=0)


DetectorFactory = Callable[..., Any]

DETECTORS: dict[str, DetectorFactory] = {
    "forte": lambda seed=0, **kw: Forte(seed=seed, **kw),
    "forte-paper": lambda seed=0, **kw: Forte(
        seed=seed, margins=False, standardise=False, components="paper", reg_covar=1e-6, **kw
    ),
    "forte-kde": lambda seed=0, **kw: Forte(density="kde", seed=seed, **kw),
    "forte-ocsvm": lambda seed=0, **kw: Forte(density="ocsvm", seed=seed, **kw),
    "mahalanobis": lambda seed=0, **kw: _PerExtractor(Mahalanobis(), seed=seed),
    "knn": lambda seed=0, k=5, **kw: _PerExtractor(KNNDistance(k=k), seed=seed),
    "ensemble": lambda seed=0, k=5, **kw: Ensemble(
        [Forte(k=k, holdout=0.0, seed=seed), _PerExtractor(KNNDistance(k=k), seed=seed)], seed=seed
    ),
}


def make_detector(name: str, seed: int = 0, **options: Any) -> Any:
    """A fresh detector by registry name."""
    if name not in DETECTORS:
        raise InputError(f"qc detector: expected one of {', '.join(DETECTORS)}, found {name!r}")
    return DETECTORS[name](seed=seed, **options)
