"""OOD detection metrics for typicality scores, with every convention named.

Why: a QC signal is only useful if its numbers say what they mean. The same detector can read
AUROC 0.9 or 0.1, FPR@95 of 0 or 0.3, depending on which class is "positive" and which way the
score points; this module fixes those choices once.

Conventions (``CONVENTION`` says them in one sentence and every ``OODReport`` carries it):

- A detector score is a **typicality** score: higher = more in-distribution (ID).
- For the ranking metrics (``auroc``, ``fpr_at_tpr``, ``aupr_in``) the **positive class is ID**
  and the score is used as is. ``aupr_out`` makes OOD positive and ranks by the negated score.
- A threshold ``t`` **accepts** a score ``s >= t`` as ID and **flags** ``s < t`` as atypical.
  ``f1_precision_at`` and ``oracle_max_f1`` score the flags with **OOD as the positive class**.
- The deployment threshold comes from ID validation scores only (``acceptance_threshold``),
  before any OOD data is seen; ``oracle_max_f1`` instead chooses the threshold by looking at
  the OOD labels, so it is an upper bound, never an achievable operating point, and must be
  labelled "oracle" wherever it is shown.

Inputs are 1-D arrays of finite numbers with at least one element; anything else is a
``ValueError`` naming the argument, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from matseg.errors import InputError

_WHERE = "matseg.qc.evaluation"

#: The conventions in one sentence (stored in every ``OODReport``).
CONVENTION = (
    "scores are typicality (higher = more in-distribution); AUROC, FPR@95%TPR and AUPR-In take "
    "ID as positive, AUPR-Out takes OOD as positive with the negated score; a score below the "
    "threshold is flagged, and F1/precision/recall take the flagged OOD class as positive; the "
    "threshold is fixed on ID validation scores, while oracle_max_f1 picks it using OOD labels."
)


# --- input checks ---------------------------------------------------------------------------


def _scores(values: ArrayLike, name: str, where: str) -> NDArray[np.float64]:
    """A score argument as a 1-D float64 array; anything else is a one-line ``ValueError``."""
    expected = "a 1-D array of finite numbers with at least one element"
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:  # ragged nested sequences
        raise InputError(f"{where}: {name}: expected {expected}, found {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{where}: {name}: expected {expected}, found dtype {arr.dtype}")
    if arr.ndim != 1:
        raise InputError(f"{where}: {name}: expected {expected}, found shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{where}: {name}: expected {expected}, found an empty array")
    out = arr.astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{where}: {name}: expected {expected}, found {int(bad.sum())} non-finite value(s) "
            f"(first at index {first}: {out[first]})"
        )
    return out


def _fraction(value: Any, name: str, where: str) -> float:
    """A rate in (0, 1] (a TPR to reach, a fraction to accept)."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not ok or not 0.0 < float(value) <= 1.0:
        raise InputError(f"{where}: {name}: expected a number in (0, 1], found {value!r}")
    return float(value)


def _threshold(value: Any, where: str) -> float:
    """A finite real threshold."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)):
        raise InputError(f"{where}: threshold: expected a finite number, found {value!r}")
    return float(value)


def _pair(
    id_scores: ArrayLike, ood_scores: ArrayLike, where: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    return _scores(id_scores, "id_scores", where), _scores(ood_scores, "ood_scores", where)


def _labelled(
    id_s: NDArray[np.float64], ood_s: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Concatenated labels (ID = 1, OOD = 0) and scores."""
    y = np.concatenate([np.ones(id_s.size, np.int64), np.zeros(ood_s.size, np.int64)])
    return y, np.concatenate([id_s, ood_s])


# --- threshold-free ranking metrics ---------------------------------------------------------


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the ROC curve with ID positive: P(ID score > OOD score), ties counting 1/2.

    1.0 = every ID image scores above every OOD image, 0.5 = chance, 0.0 = perfectly reversed.
    """
    y, s = _labelled(*_pair(id_scores, ood_scores, f"{_WHERE}.auroc"))
    return float(roc_auc_score(y, s))


def fpr_at_tpr(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95) -> float:
    """Fraction of OOD images accepted as ID at the first threshold that accepts ``tpr`` of ID.

    Thresholds are scanned from the highest score down (``sklearn.metrics.roc_curve`` order, all
    thresholds kept); the first whose TPR (fraction of ID scores ``>=`` it) reaches ``tpr`` is
    used (a TPR within 1e-12 of ``tpr`` counts as reaching it, against float rounding of
    ``k / n``). Tied scores share one threshold, so they are accepted together. Unlike the Forte
    reference code, which takes the threshold whose TPR is *closest* to ``tpr`` (possibly below
    it), the TPR here is never below ``tpr``, so the FPR is never flattered.
    """
    where = f"{_WHERE}.fpr_at_tpr"
    target = _fraction(tpr, "tpr", where)
    y, s = _labelled(*_pair(id_scores, ood_scores, where))
    fpr_curve, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    reached = np.flatnonzero(tpr_curve >= target - 1e-12)
    return float(fpr_curve[reached[0]])  # the last point has TPR 1, so ``reached`` is non-empty


def aupr_in(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Average precision with ID positive and the score as is (AUPR-In)."""
    y, s = _labelled(*_pair(id_scores, ood_scores, f"{_WHERE}.aupr_in"))
    return float(average_precision_score(y, s))


def aupr_out(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Average precision with OOD positive, ranked by the negated score (AUPR-Out)."""
    y, s = _labelled(*_pair(id_scores, ood_scores, f"{_WHERE}.aupr_out"))
    return float(average_precision_score(1 - y, -s))


# --- a threshold fixed on ID validation data ------------------------------------------------


def acceptance_threshold(id_validation_scores: ArrayLike, accept: float = 0.95) -> float:
    """The largest threshold that accepts (``score >= threshold``) at least ``accept`` of ID.

    With the ``n`` validation scores sorted ascending ``s[0] <= ... <= s[n-1]`` and
    ``k = ceil(accept * n)`` the number that must be accepted, the threshold is ``s[n - k]``
    (a lower empirical quantile at ``1 - accept``, never interpolated). At least ``k`` scores are
    ``>=`` it; scores tied with it are all accepted, so ties can make the accepted fraction
    larger than ``accept`` (never smaller). ``accept * n`` is rounded to 9 decimals before the
    ceiling so that float noise (``0.07 * 100`` is ``7.000000000000001``) does not demand one
    more image. Computed from ID data alone, before any OOD image is seen.
    """
    where = f"{_WHERE}.acceptance_threshold"
    scores = np.sort(_scores(id_validation_scores, "id_validation_scores", where))
    fraction = _fraction(accept, "accept", where)
    n = scores.size
    k = min(n, max(1, math.ceil(round(fraction * n, 9))))
    return float(scores[n - k])


def flag(scores: ArrayLike, threshold: float) -> NDArray[np.bool_]:
    """True where a score is flagged as atypical, i.e. ``score < threshold``."""
    where = f"{_WHERE}.flag"
    s = _scores(scores, "scores", where)
    return s < _threshold(threshold, where)


def _f1(tp: NDArray[Any], fp: NDArray[Any], fn: NDArray[Any]) -> NDArray[np.float64]:
    """F1 = 2 TP / (2 TP + FP + FN), 0.0 where that denominator is 0."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)


def f1_precision_at(
    id_scores: ArrayLike, ood_scores: ArrayLike, threshold: float
) -> tuple[float, float, float]:
    """``(f1, precision, recall)`` of the flags ``score < threshold``, OOD positive.

    TP = flagged OOD, FP = flagged ID, FN = accepted OOD. Precision is 0.0 when nothing is
    flagged, and F1 is 0.0 when precision and recall are both 0 (no division-by-zero warnings,
    no NaN); recall is always defined because there is at least one OOD score.
    """
    where = f"{_WHERE}.f1_precision_at"
    id_s, ood_s = _pair(id_scores, ood_scores, where)
    t = _threshold(threshold, where)
    tp = int(np.count_nonzero(ood_s < t))
    fp = int(np.count_nonzero(id_s < t))
    fn = ood_s.size - tp
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / ood_s.size
    return float(_f1(np.array(tp), np.array(fp), np.array(fn))), float(precision), float(recall)


def oracle_max_f1(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """ORACLE: the best F1 (OOD positive, flag ``score < t``) over every possible threshold.

    The threshold is chosen by looking at the OOD labels, which a deployed QC never has, so this
    is an upper bound on what any threshold could achieve and must be labelled "oracle" wherever
    it is shown; the honest operating point is ``f1_precision_at`` at ``acceptance_threshold``.
    Every distinct flag set is tried: ``t`` runs over the distinct scores (flags those strictly
    below) and ``+inf`` (flags everything).
    """
    id_s, ood_s = _pair(id_scores, ood_scores, f"{_WHERE}.oracle_max_f1")
    candidates = np.append(np.unique(np.concatenate([id_s, ood_s])), np.inf)
    tp = np.searchsorted(np.sort(ood_s), candidates, side="left")
    fp = np.searchsorted(np.sort(id_s), candidates, side="left")
    return float(_f1(tp, fp, ood_s.size - tp).max())


# --- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OODReport:
    """Every OOD number for one (ID, OOD) pair of score sets at one pre-declared threshold.

    ``threshold``, ``f1``, ``precision``, ``recall`` and ``flagged_id_fraction`` (the share of ID
    images flagged, i.e. the false-alarm rate) describe the deployable operating point;
    ``oracle_max_f1`` looks at the OOD labels and is an upper bound only.
    """

    n_id: int
    n_ood: int
    auroc: float
    fpr_at_95_tpr: float
    aupr_in: float
    aupr_out: float
    threshold: float
    f1: float
    precision: float
    recall: float
    flagged_id_fraction: float
    oracle_max_f1: float
    convention: str = CONVENTION

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping (for the evaluation record)."""
        return dataclasses.asdict(self)


def evaluate_scores(id_scores: ArrayLike, ood_scores: ArrayLike, threshold: float) -> OODReport:
    """All metrics for ID vs OOD scores, the flags taken at ``threshold`` (fixed beforehand).

    ``threshold`` should come from ``acceptance_threshold`` on held-out ID validation scores,
    not from these ``id_scores`` or ``ood_scores``.
    """
    id_s, ood_s = _pair(id_scores, ood_scores, f"{_WHERE}.evaluate_scores")
    t = _threshold(threshold, f"{_WHERE}.evaluate_scores")
    f1, precision, recall = f1_precision_at(id_s, ood_s, t)
    return OODReport(
        n_id=int(id_s.size),
        n_ood=int(ood_s.size),
        auroc=auroc(id_s, ood_s),
        fpr_at_95_tpr=fpr_at_tpr(id_s, ood_s, 0.95),
        aupr_in=aupr_in(id_s, ood_s),
        aupr_out=aupr_out(id_s, ood_s),
        threshold=t,
        f1=f1,
        precision=precision,
        recall=recall,
        flagged_id_fraction=float(np.mean(flag(id_s, t))),
        oracle_max_f1=oracle_max_f1(id_s, ood_s),
    )
