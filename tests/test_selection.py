"""The statistics of the choice: Holm, equivalence, the false-"better" rate and the power."""

from __future__ import annotations

import numpy as np
import pytest

from matseg.errors import InputError
from matseg.selection import compare_to_best, holm, power


def test_holm_matches_the_step_down_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    with pytest.raises(InputError, match="p-values in"):
        holm([0.1, 1.2])


def _grid(rng: np.random.Generator, shifts: list[float], sd: float, n: int = 20) -> dict:
    difficulty = rng.normal(0.7, 0.1, n)
    return {f"c{i}": difficulty + s + rng.normal(0, sd, n) for i, s in enumerate(shifts)}


def test_no_real_difference_gives_at_most_five_percent_false_better() -> None:
    """Six combinations that differ only by noise, 20 images, the best chosen on the same
    scores: a "better" verdict anywhere in the grid in at most alpha of the simulations
    (measured: 3.4-3.7% over 1500 simulations; 800 here, standard error 0.7%)."""
    rng = np.random.default_rng(11)
    sims = 800
    false = sum(
        any(c.verdict == "better" for c in compare_to_best(_grid(rng, [0.0] * 6, 0.03),
                                                           n_boot=200, seed=s))
        for s in range(sims)
    )  # fmt: skip
    assert false / sims <= 0.05


def test_testing_only_the_chosen_best_would_not_control_the_error() -> None:
    """Why every pair is tested: the best chosen on the data, compared only with the others
    (Holm over its 5 comparisons), is falsely "better" too often (10% over 1000 simulations,
    benchmarks/selection_power.py)."""
    from scipy import stats

    rng = np.random.default_rng(11)
    sims, false = 300, 0
    for _ in range(sims):
        scores = _grid(rng, [0.0] * 6, 0.03)
        best = max(scores, key=lambda k: scores[k].mean())
        p = [stats.wilcoxon(scores[best] - x).pvalue for k, x in scores.items() if k != best]
        false += bool((holm(p) < 0.05).any())
    assert false / sims > 0.07


def test_a_true_difference_is_found_with_the_documented_power() -> None:
    """0.02 IoU over 20 images, paired per-image differences with sd 0.02: power 0.85 (the
    table of docs/statistics.md), within simulation error."""
    assert power(20, 0.02, 0.02, simulations=200, seed=1) == pytest.approx(0.85, abs=0.08)
    assert power(20, 0.02, 0.05, simulations=100, seed=1) < 0.25  # noisier: rarely found


def test_verdicts_better_equivalent_undecided() -> None:
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0.7, 0.1, 20)
    scores = {
        "unet": difficulty + 0.05 + rng.normal(0, 0.005, 20),
        "fpn": difficulty + rng.normal(0, 0.005, 20),  # 0.05 worse: better
        "unet++": difficulty + 0.049 + rng.normal(0, 0.002, 20),  # within 0.01: equivalent
        "deeplabv3": difficulty + 0.03 + rng.normal(0, 0.2, 20),  # noisy: undecided
    }
    result = {c.other: c for c in compare_to_best(scores)}
    assert {c.best for c in result.values()} == {"unet"}
    assert result["fpn"].verdict == "better" and result["fpn"].ci[0] > 0
    assert result["unet++"].verdict == "equivalent"
    assert result["deeplabv3"].verdict == "undecided"
    assert result["fpn"].p_holm >= result["fpn"].p  # corrected p never smaller


def test_bad_scores_are_one_line() -> None:
    with pytest.raises(InputError, match="two or more combinations"):
        compare_to_best({"unet": np.ones(3)})
    with pytest.raises(InputError, match="two or more combinations"):
        compare_to_best({"unet": np.ones(3), "fpn": np.ones(4)})
    with pytest.raises(InputError, match="finite 1-D per-image scores for fpn"):
        compare_to_best({"unet": np.ones(3), "fpn": np.array([1.0, np.nan, 1.0])})
