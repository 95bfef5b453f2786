"""OOD metrics: hand-computed cases, rank-based cross-checks, the validation threshold, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_curve

from matseg.qc.evaluation import (
    CONVENTION,
    OODReport,
    acceptance_threshold,
    aupr_in,
    aupr_out,
    auroc,
    evaluate_scores,
    f1_precision_at,
    flag,
    fpr_at_tpr,
    oracle_max_f1,
)

# --- independent reference computations (no sklearn) ---------------------------------------


def _auroc_mann_whitney(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """AUROC = U / (n_id * n_ood), U the Mann-Whitney statistic of the ID sample (ties = 1/2)."""
    u = mannwhitneyu(id_s, ood_s, alternative="two-sided").statistic
    return float(u) / (id_s.size * ood_s.size)


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """AP = mean over positives p of precision at threshold score(p) (scores >= it predicted).

    Tied positives share one precision, so this equals the step-wise sum over distinct
    thresholds even with ties.
    """
    scores = np.concatenate([pos, neg])
    return float(np.mean([np.sum(pos >= p) / np.sum(scores >= p) for p in pos]))


def _fpr_first_reaching(id_s: np.ndarray, ood_s: np.ndarray, tpr: float) -> float:
    """Brute force: the highest threshold among the scores that accepts >= tpr of ID."""
    candidates = [t for t in np.unique(np.concatenate([id_s, ood_s])) if np.mean(id_s >= t) >= tpr]
    return float(np.mean(ood_s >= max(candidates)))


def _random_pair(rng: np.random.Generator, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    n_id, n_ood = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    id_s = rng.normal(1.0, 1.0, n_id)
    ood_s = rng.normal(0.0, 1.5, n_ood)
    if ties:
        id_s, ood_s = np.round(id_s * 2) / 2, np.round(ood_s * 2) / 2
    return id_s, ood_s


# --- hand-computed cases -------------------------------------------------------------------


def test_perfect_separation() -> None:
    id_s, ood_s = np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0])
    assert auroc(id_s, ood_s) == 1.0
    assert fpr_at_tpr(id_s, ood_s) == 0.0
    assert aupr_in(id_s, ood_s) == 1.0
    assert aupr_out(id_s, ood_s) == 1.0
    assert oracle_max_f1(id_s, ood_s) == 1.0


def test_reversed_scores() -> None:
    """An OOD detector whose score points the wrong way reads AUROC 0, not 1."""
    id_s, ood_s = np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0, 5.0])
    assert auroc(id_s, ood_s) == 0.0
    assert fpr_at_tpr(id_s, ood_s) == 1.0  # accepting all ID accepts all OOD


def test_auroc_with_ties_by_hand() -> None:
    # pairs (ID, OOD): (2,1) > , (2,0) > , (1,1) tie = 1/2, (1,0) >  -> 3.5 / 4
    assert auroc([2.0, 1.0], [1.0, 0.0]) == pytest.approx(0.875)


def test_fpr_takes_first_threshold_reaching_tpr_not_closest() -> None:
    """12 ID scores: TPR steps are k/12, so 11/12 = 0.917 is closer to 0.95 than 12/12 = 1.0.

    The Forte reference (closest TPR) would stop at 11/12 (threshold 2) and report FPR 0; the
    first threshold whose TPR reaches 95 % is 1.0 (TPR 12/12), which also accepts the OOD 1.5.
    """
    id_s = np.arange(1.0, 13.0)
    ood_s = np.array([1.5, 0.0, -1.0, -2.0])
    y = np.r_[np.ones(12), np.zeros(4)]
    fpr, tpr, _ = roc_curve(y, np.r_[id_s, ood_s], drop_intermediate=False)
    closest = int(np.argmin(np.abs(tpr - 0.95)))
    assert tpr[closest] == pytest.approx(11 / 12) and fpr[closest] == 0.0
    assert fpr_at_tpr(id_s, ood_s, 0.95) == 0.25
    assert fpr_at_tpr(id_s, ood_s, 11 / 12) == 0.0  # a TPR exactly on a step is reached


def test_fpr_ties_are_accepted_together() -> None:
    assert fpr_at_tpr([1.0, 1.0, 1.0, 1.0], [1.0, 0.0]) == 0.5


def test_fpr_at_exact_step() -> None:
    """20 ID scores: 19/20 = 0.95 exactly, so the 19th ID score is the threshold."""
    id_s = np.arange(1.0, 21.0)
    ood_s = np.array([1.5, 2.5])  # between ID 1 and 2, and between ID 2 and 3
    assert fpr_at_tpr(id_s, ood_s) == 0.5  # threshold 2 accepts 19/20 ID and the OOD 2.5


# --- cross-checks against rank-based computations ------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_mann_whitney(ties: bool) -> None:
    rng = np.random.default_rng(11)
    for _ in range(25):
        id_s, ood_s = _random_pair(rng, ties)
        assert auroc(id_s, ood_s) == pytest.approx(_auroc_mann_whitney(id_s, ood_s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_rank_based(ties: bool) -> None:
    rng = np.random.default_rng(12)
    for _ in range(25):
        id_s, ood_s = _random_pair(rng, ties)
        assert aupr_in(id_s, ood_s) == pytest.approx(_average_precision(id_s, ood_s), abs=1e-12)
        assert aupr_out(id_s, ood_s) == pytest.approx(_average_precision(-ood_s, -id_s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_fpr_matches_brute_force(ties: bool) -> None:
    rng = np.random.default_rng(13)
    for _ in range(25):
        id_s, ood_s = _random_pair(rng, ties)
        for tpr in (0.5, 0.9, 0.95, 1.0):
            assert fpr_at_tpr(id_s, ood_s, tpr) == _fpr_first_reaching(id_s, ood_s, tpr)


# --- the threshold fixed on ID validation scores -------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 19, 20, 21, 100, 1001])
@pytest.mark.parametrize("accept", [0.5, 0.9, 0.95, 0.99, 1.0])
def test_threshold_accepts_at_least_the_fraction(n: int, accept: float) -> None:
    scores = np.random.default_rng(n).normal(size=n)
    t = acceptance_threshold(scores, accept)
    accepted = int(np.sum(scores >= t))
    assert accepted / n >= accept
    # tight: continuous scores have no ties, so exactly ceil(accept * n) are accepted
    assert accepted == math.ceil(round(accept * n, 9))
    assert not flag(scores, t).sum() > n - math.ceil(round(accept * n, 9))


def test_threshold_by_hand_and_with_ties() -> None:
    assert acceptance_threshold(np.arange(1.0, 21.0), 0.95) == 2.0  # accepts 19 of 20
    assert acceptance_threshold(np.arange(1.0, 21.0), 0.96) == 1.0  # 19.2 -> all 20
    assert acceptance_threshold([7.0, 7.0, 7.0], 0.95) == 7.0
    # ties straddling the quantile: all tied scores are accepted (here 4/4 for accept 0.5)
    assert acceptance_threshold([0.0, 0.0, 0.0, 1.0], 0.5) == 0.0
    # float noise: 0.07 * 100 is 7.000000000000001, yet 7 accepted images are enough
    t = acceptance_threshold(np.arange(100.0), 0.07)
    assert t == 93.0 and np.sum(np.arange(100.0) >= t) == 7


# --- flags, F1, oracle -----------------------------------------------------------------------


def test_flag_is_strictly_below_threshold() -> None:
    np.testing.assert_array_equal(flag([0.0, 1.0, 2.0], 1.0), [True, False, False])
    assert flag([0.0, 1.0], 1.0).dtype == np.bool_


def test_f1_precision_recall_by_hand() -> None:
    id_s = np.array([5.0, 6.0, 7.0, 8.0, 1.0])
    ood_s = np.array([0.0, 2.0, 3.0, 6.5])
    # t = 4: flagged OOD {0, 2, 3} -> TP 3, FN 1 (6.5); flagged ID {1} -> FP 1
    f1, precision, recall = f1_precision_at(id_s, ood_s, 4.0)
    assert (precision, recall) == (0.75, 0.75) and f1 == pytest.approx(0.75)
    # everything flagged: TP 4, FP 5 -> precision 4/9, recall 1, F1 = 8 / 13
    f1, precision, recall = f1_precision_at(id_s, ood_s, 100.0)
    assert precision == pytest.approx(4 / 9) and recall == 1.0 and f1 == pytest.approx(8 / 13)
    # nothing flagged: precision 0/0 -> 0.0 by convention, F1 0.0
    assert f1_precision_at(id_s, ood_s, -100.0) == (0.0, 0.0, 0.0)
    # oracle: t in (3, 5] is best (F1 0.75); t in (6.5, 7] gives 8/11 < 0.75
    assert oracle_max_f1(id_s, ood_s) == pytest.approx(0.75)


@pytest.mark.parametrize("ties", [False, True])
def test_oracle_is_the_best_threshold(ties: bool) -> None:
    rng = np.random.default_rng(14)
    for _ in range(15):
        id_s, ood_s = _random_pair(rng, ties)
        values = np.unique(np.concatenate([id_s, ood_s]))
        grid = np.concatenate([values, (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
        best = max(f1_precision_at(id_s, ood_s, float(t))[0] for t in grid)
        assert oracle_max_f1(id_s, ood_s) == pytest.approx(best, abs=1e-12)


# --- the report ------------------------------------------------------------------------------


def test_evaluate_scores_report() -> None:
    rng = np.random.default_rng(15)
    validation = rng.normal(1.0, 1.0, 200)
    id_s, ood_s = rng.normal(1.0, 1.0, 50), rng.normal(-1.0, 1.0, 40)
    t = acceptance_threshold(validation)
    report = evaluate_scores(id_s, ood_s, t)
    assert isinstance(report, OODReport)
    assert (report.n_id, report.n_ood, report.threshold) == (50, 40, t)
    assert report.auroc == auroc(id_s, ood_s)
    assert report.fpr_at_95_tpr == fpr_at_tpr(id_s, ood_s, 0.95)
    assert (report.aupr_in, report.aupr_out) == (aupr_in(id_s, ood_s), aupr_out(id_s, ood_s))
    assert (report.f1, report.precision, report.recall) == f1_precision_at(id_s, ood_s, t)
    assert report.flagged_id_fraction == float(np.mean(id_s < t))
    assert report.oracle_max_f1 >= report.f1
    assert report.convention == CONVENTION and "higher = more in-distribution" in CONVENTION
    d = report.as_dict()
    assert list(d) == [
        "n_id", "n_ood", "auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out", "threshold", "f1",
        "precision", "recall", "flagged_id_fraction", "oracle_max_f1", "convention",
    ]  # fmt: skip
    assert d["auroc"] == report.auroc


# --- input checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "found"),
    [
        (np.zeros((2, 2)), r"shape \(2, 2\)"),
        (np.array([]), "empty"),
        (np.array([0.0, np.nan]), "non-finite"),
        (np.array([1.0, np.inf]), "non-finite"),
        (np.array(["a", "b"]), "dtype <U1"),
        (3.0, r"shape \(\)"),
    ],
)
def test_bad_scores_name_the_argument(bad: object, found: str) -> None:
    good = np.array([0.0, 1.0])
    for fn in (auroc, fpr_at_tpr, aupr_in, aupr_out, oracle_max_f1):
        with pytest.raises(ValueError, match=f"id_scores: expected a 1-D array.*found .*{found}"):
            fn(bad, good)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=f"ood_scores: expected a 1-D array.*found .*{found}"):
            fn(good, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"id_validation_scores: expected.*found .*{found}"):
        acceptance_threshold(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scores: expected"):
        flag(bad, 0.0)  # type: ignore[arg-type]


def test_bad_rates_and_thresholds() -> None:
    good = np.array([0.0, 1.0])
    for tpr in (0.0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"tpr: expected a number in \(0, 1\]"):
            fpr_at_tpr(good, good, tpr)
    with pytest.raises(ValueError, match=r"accept: expected a number in \(0, 1\]"):
        acceptance_threshold(good, 0.0)
    for threshold in (float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="threshold: expected a finite number"):
            flag(good, threshold)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="threshold: expected a finite number"):
            evaluate_scores(good, good, threshold)  # type: ignore[arg-type]
