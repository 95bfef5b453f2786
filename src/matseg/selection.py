"""The statistics of choosing an architecture: the best against every other, on paired images.

Per-image scores (macro IoU of each image, out-of-fold where cross-validation ran) of every
combination on the same images. The best is the one with the highest mean, chosen on these same
scores, so testing it only against the others would be biased (under no real difference the
maximum of six noisy means beats the minimum "significantly" far more often than 5%). Every
pair of the grid is therefore tested, two-sided (Wilcoxon's signed-rank test), and the p-values
Holm-corrected over all ``k (k - 1) / 2`` pairs: the chance of any false "better" in the grid,
whichever combination the data made best, stays at most ``alpha``. Then, for the best against
each other combination:

- **equivalent**: two one-sided tests (TOST: signed-rank on ``difference + margin`` > 0 and on
  ``margin - difference`` > 0) put the difference inside ``+-margin``, Holm-corrected over the
  best's comparisons, so a "tie" means "proved close", not "not proved different" (a
  difference proved both nonzero and smaller than the margin is equivalent: the margin is
  what the user called too small to matter);
- **better**: not equivalent, its corrected p < ``alpha``, the mean difference is positive and
  the paired bootstrap CI excludes 0;
- **undecided**: neither.

:func:`power` simulates the whole procedure (``docs/statistics.md`` has its table for 20-image
datasets). scipy has no Holm procedure (statsmodels' ``multipletests`` does, but matseg does not
depend on statsmodels), so :func:`holm` is the few lines of Holm (1979).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from matseg.errors import InputError

ALPHA = 0.05
TIE_MARGIN = 0.01  # IoU: two combinations closer than this are "equivalent" when proved so

Verdict = Literal["better", "equivalent", "undecided"]


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given), each at most 1."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise InputError(f"holm: expected p-values in [0, 1], found {pvalues!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def signed_rank(x: np.ndarray, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of ``x`` against 0 (1 when every value is 0)."""
    if not np.any(x != 0):
        return 1.0
    from scipy import stats  # here, so that profiles (which read TIE_MARGIN) stay light

    return float(stats.wilcoxon(x, zero_method="wilcox", alternative=alternative).pvalue)


@dataclass(frozen=True)
class Comparison:
    """The best combination against one other on their common images."""

    best: str
    other: str
    n_images: int
    mean_difference: float  # best - other, mean per-image score
    ci: tuple[float, float]  # paired bootstrap of the mean difference, 1 - alpha
    p: float  # two-sided signed-rank, uncorrected
    p_holm: float  # Holm over every pair of the grid
    p_equivalent: float  # TOST, uncorrected
    p_equivalent_holm: float  # Holm over the best's comparisons
    verdict: Verdict


def _check_scores(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = {name: np.asarray(x, dtype=float) for name, x in scores.items()}
    shapes = {x.shape for x in arrays.values()}
    if len(arrays) < 2 or len(shapes) != 1 or next(iter(shapes))[0:1] == (0,):
        raise InputError(
            "compare: expected per-image scores of two or more combinations on the same images, "
            f"found { ({name: x.shape for name, x in arrays.items()}) }"
        )
    for name, x in arrays.items():
        if x.ndim != 1 or not np.isfinite(x).all():
            raise InputError(f"compare: expected finite 1-D per-image scores for {name}")
    return arrays


def compare_to_best(
    scores: Mapping[str, np.ndarray],
    margin: float = TIE_MARGIN,
    alpha: float = ALPHA,
    n_boot: int = 10_000,
    seed: int = 0,
) -> list[Comparison]:
    """The best (highest mean) against every other combination, ordered by mean, verdicts
    corrected as the module says. ``scores``: combination -> per-image scores, aligned."""
    arrays = _check_scores(scores)
    names = sorted(arrays, key=lambda name: -arrays[name].mean())
    best = names[0]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    p_raw = [signed_rank(arrays[a] - arrays[b]) for a, b in pairs]
    p_pairs = {pair: (p, p_h) for pair, p, p_h in zip(pairs, p_raw, holm(p_raw), strict=True)}
    rng = np.random.default_rng(seed)
    n = len(arrays[best])
    resample = rng.integers(0, n, size=(n_boot, n))
    raw = []
    for other in names[1:]:
        diff = arrays[best] - arrays[other]
        lo, hi = np.percentile(diff[resample].mean(axis=1), [50 * alpha, 100 - 50 * alpha])
        p_eq = max(signed_rank(diff + margin, "greater"), signed_rank(margin - diff, "greater"))
        raw.append((other, diff, (float(lo), float(hi)), p_eq))
    p_eq_holm = holm([r[3] for r in raw])
    out = []
    for (other, diff, ci, p_eq), p_eq_h in zip(raw, p_eq_holm, strict=True):
        p, p_h = (float(v) for v in p_pairs[(best, other)])
        verdict: Verdict = "undecided"
        if p_eq_h < alpha:  # proved inside the margin, even if also proved nonzero
            verdict = "equivalent"
        elif p_h < alpha and diff.mean() > 0 and ci[0] > 0:
            verdict = "better"
        out.append(Comparison(best, other, n, float(diff.mean()), ci, p, p_h,
                              p_eq, float(p_eq_h), verdict))  # fmt: skip
    return out


def power(
    n_images: int,
    difference: float,
    sd: float,
    n_combinations: int = 6,
    alpha: float = ALPHA,
    simulations: int = 1000,
    seed: int = 0,
) -> float:
    """The chance that the procedure calls the truly best combination "better" than a rival
    worse by ``difference`` on average: one combination is better by ``difference`` than the
    ``n_combinations - 1`` others (equal among themselves); each image has its own difficulty
    (shared by all combinations), and the paired per-image differences have standard deviation
    ``sd``. Simulated: the fraction of (simulation, rival) cases called "better" with the truly
    best chosen as best."""
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(n_combinations)]
    found = 0
    for _ in range(simulations):
        difficulty = rng.normal(0.7, 0.1, n_images)
        noise = rng.normal(0.0, sd / math.sqrt(2), (n_combinations, n_images))
        shift = np.r_[difference, np.zeros(n_combinations - 1)]
        scores = {name: difficulty + shift[i] + noise[i] for i, name in enumerate(names)}
        result = compare_to_best(scores, alpha=alpha, n_boot=500, seed=int(rng.integers(1 << 31)))
        if result[0].best == "c0":
            found += sum(c.verdict == "better" for c in result)
    return found / (simulations * (n_combinations - 1))
