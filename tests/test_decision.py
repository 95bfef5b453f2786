"""The decision on hand-built job results with known answers (matseg.decision)."""

from __future__ import annotations

import numpy as np
import pytest

from builders import job_result as _result
from matseg.decision import Ranking, decide_dataset, halving_drops

RNG = np.random.default_rng(0)
BASE = RNG.uniform(0.5, 0.8, size=20)


def test_a_clear_winner_is_better_and_recommended() -> None:
    d = decide_dataset([
        _result("r50", "unet", list(BASE + 0.10 + RNG.normal(0, 0.01, 20)), 30_000_000),
        _result("r18", "fpn", list(BASE), 10_000_000),
    ])  # fmt: skip
    assert d is not None and d.protocol == "cv" and d.evidence == "oof"
    assert d.verdict == "better" and d.recommended == "r50 + unet"
    other = d.ranking[1].versus_best
    assert other is not None and other.verdict == "better"
    assert other.ci[0] > 0.05 and other.p_holm < 1e-3
    assert d.ranking[0].best_in_bootstrap == pytest.approx(1.0)


def test_proved_close_is_a_tie_and_the_cheaper_is_recommended() -> None:
    noise = RNG.normal(0, 0.001, 20)
    d = decide_dataset([
        _result("big", "unet", list(BASE + 0.001 + noise), 50_000_000),
        _result("small", "unet", list(BASE - noise), 5_000_000),
    ])  # fmt: skip
    assert d is not None and d.ranking[0].encoder == "big"  # higher mean IoU ...
    assert d.verdict == "tie" and d.recommended == "small + unet"  # ... proved within 0.01
    assert d.ranking[1].versus_best is not None
    assert d.ranking[1].versus_best.verdict == "equivalent"


def test_not_proved_different_nor_close_is_inconclusive_and_keeps_the_best() -> None:
    noise = RNG.normal(0, 0.08, 20)
    d = decide_dataset([
        _result("big", "unet", list(BASE + 0.01 + noise), 50_000_000),
        _result("small", "unet", list(BASE - noise), 5_000_000),
    ])  # fmt: skip
    assert d is not None and d.verdict == "inconclusive"
    assert d.recommended == d.ranking[0].name


def test_few_images_say_that_no_test_can_decide() -> None:
    d = decide_dataset(
        [_result("big", "unet", [0.9, 0.8, 0.85], split="val", fold=None),
         _result("small", "unet", [0.6, 0.5, 0.55], split="val", fold=None)]
    )  # fmt: skip
    assert d is not None and d.protocol == "holdout" and d.verdict == "inconclusive"
    assert d.recommended == "big + unet"  # not the cheaper, clearly worse one
    assert any("smallest possible Wilcoxon p = 0.250" in r for r in d.reasons)
    assert any("use cross-validation" in r for r in d.reasons)


def test_a_model_predicting_the_majority_class_is_no_better_than_a_constant() -> None:
    """The FPN that predicted background everywhere: exactly the majority baseline's scores,
    never recommended, and not listed as a rival."""
    good = _result("r18", "unet", list(BASE))
    counts = np.array(good.evaluations["oof"].confusions).sum(axis=2)  # pixels per true class
    background = [[[int(c[0]), 0], [int(c[1]), 0]] for c in counts]
    lazy = _result("r18", "fpn", list(BASE), confusions=background)
    d = decide_dataset([lazy, good])
    assert d is not None
    by_name = {e.name: e for e in d.ranking}
    assert not by_name["r18 + fpn"].beats_constant
    assert by_name["r18 + fpn"].constant_difference == pytest.approx(0.0)
    assert by_name["r18 + unet"].beats_constant
    assert d.recommended == "r18 + unet" and d.verdict == "only one beats a constant"
    assert any("r18 + fpn is no better than a constant" in r for r in d.reasons)
    only_lazy = decide_dataset([lazy])
    assert only_lazy is not None and only_lazy.recommended is None
    assert only_lazy.verdict == "no better than a constant"


def test_seeds_and_repeats_are_pooled_per_image() -> None:
    keys = ["a", "b"]
    d = decide_dataset([
        _result("e", "unet", [0.5, 0.7], keys=keys),
        _result("e", "unet", [0.7, 0.9], keys=keys, seed=1),
        _result("f", "unet", [0.6, 0.6], keys=keys),
    ])  # fmt: skip
    assert d is not None and d.images == keys
    pooled = {e.name: e for e in d.ranking}["e + unet"]
    assert len(pooled.jobs) == 2 and d.seeds == [0, 1]
    # confusions summed per image: IoU of [[2A, b1+b2], ...] lies between the two seeds' IoUs
    per_image = d.per_image["e + unet"]
    assert 0.5 < per_image[0] < 0.7 and 0.7 < per_image[1] < 0.9


def test_no_better_verdict_when_a_side_did_not_converge() -> None:
    winner = list(BASE + 0.10 + RNG.normal(0, 0.01, 20))
    for unsettled in ("r50", "r18"):
        d = decide_dataset([
            _result("r50", "unet", winner, 30_000_000, converged=unsettled != "r50"),
            _result("r18", "fpn", list(BASE), 10_000_000, converged=unsettled != "r18"),
        ])  # fmt: skip
        assert d is not None and d.verdict == "inconclusive" and d.recommended == "r50 + unet"
        versus = d.ranking[1].versus_best
        assert versus is not None and versus.p_holm < 1e-3  # the numbers alone say better
        assert versus.verdict == "undecided" and "not converged" in versus.note


def test_ranking_stability_across_folds() -> None:
    """Three combinations over five folds of four images: a always best, so it is best in every
    fold and resample, and the folds' rankings agree (tau 1)."""
    results = []
    for fold in range(5):
        keys = [f"f{fold}i{i}" for i in range(4)]
        base = BASE[fold * 4 : fold * 4 + 4]
        for k, enc in enumerate(("a", "b", "c")):
            results.append(_result(enc, "unet", list(base - 0.05 * k), fold=fold, keys=keys))
    d = decide_dataset(results)
    assert d is not None and len(d.images) == 20
    best_in_folds = {e.name: e.best_in_folds for e in d.ranking}
    assert best_in_folds == {"a + unet": 1.0, "b + unet": 0.0, "c + unet": 0.0}
    assert d.kendall_tau_folds == pytest.approx(1.0)


def test_unfinished_jobs_shrink_the_common_images_and_say_so() -> None:
    d = decide_dataset([
        _result("a", "unet", list(BASE[:10]), keys=[f"i{k}" for k in range(10)]),
        _result("b", "unet", list(BASE[:6]), keys=[f"i{k}" for k in range(6)]),
    ])  # fmt: skip
    assert d is not None and len(d.images) == 6
    assert any("4 of 10 images lack a prediction" in n for n in d.notes)


def test_halving_drops_what_is_already_shown_worse_and_keeps_the_undecided() -> None:
    clear = decide_dataset([
        _result("r50", "unet", list(BASE + 0.10 + RNG.normal(0, 0.01, 20)), converged=False),
        _result("r18", "fpn", list(BASE), converged=False),
        _result("r18", "unet", list(BASE + 0.10 + RNG.normal(0, 0.08, 20)), converged=False),
    ])  # fmt: skip
    assert clear is not None
    dropped = halving_drops([clear])
    # at a short rung nothing has converged: the test alone decides the drop
    assert set(dropped) == {("sem", "r18 + fpn")}
    assert dropped[("sem", "r18 + fpn")].startswith("worse than r50 + unet by 0.1")
    noise = RNG.normal(0, 0.001, 20)
    close = decide_dataset([
        _result("big", "unet", list(BASE + 0.001 + noise)),
        _result("small", "unet", list(BASE - noise)),
    ])  # fmt: skip
    assert close is not None and halving_drops([close]) == {}  # equivalent: both go on


def test_halving_never_drops_everything() -> None:
    """At a short rung no combination may beat a constant yet: all go on to the next rung."""
    good = _result("r18", "unet", list(BASE))
    counts = np.array(good.evaluations["oof"].confusions).sum(axis=2)
    background = [[[int(c[0]), 0], [int(c[1]), 0]] for c in counts]
    lazy = [_result(e, "fpn", list(BASE), confusions=background) for e in ("a", "b")]
    d = decide_dataset(lazy)
    assert d is not None and d.verdict == "no better than a constant"
    assert halving_drops([d]) == {}


def test_ranking_by_the_target_quantity_can_disagree_with_iou_and_says_so() -> None:
    """The higher-IoU combination overestimates the phase fraction on every image; the other
    gets it right: by IoU the first wins, by the target the second; a target error no better
    than predicting the training mean everywhere is never recommended."""
    truth = list(RNG.uniform(0.2, 0.4, 20))
    biased = [t + 0.05 + RNG.normal(0, 0.005) for t in truth]
    accurate = [t + RNG.normal(0, 0.005) for t in truth]
    results = [
        _result("r50", "unet", list(BASE + 0.05), fractions=(truth, biased, 0.3)),
        _result("r18", "fpn", list(BASE), fractions=(truth, accurate, 0.3)),
    ]
    by_iou = decide_dataset(results, ranking_by=Ranking("area_fraction:fg"))
    assert by_iou is not None and by_iou.ranked_by == "iou" and by_iou.recommended == "r50 + unet"
    first = by_iou.ranking[0]  # the target's error is reported beside IoU all the same
    assert first.target_error == pytest.approx(np.mean(np.abs(np.subtract(biased, truth))))
    assert first.target_bias == pytest.approx(0.05, abs=0.005) and first.target_error_ci[0] > 0.04
    assert any("disagree on the best" in n for n in by_iou.notes)
    by_target = decide_dataset(results, ranking_by=Ranking("area_fraction:fg", by="target"))
    assert by_target is not None and by_target.ranked_by == "area_fraction:fg"
    assert by_target.verdict == "better" and by_target.recommended == "r18 + fpn"
    assert "smallest out-of-fold area_fraction:fg error" in " ".join(by_target.reasons)
    assert by_target.tie_margin == pytest.approx(0.05 * np.mean(truth))
    constant = [0.3] * 20  # predicting the training mean everywhere
    lazy = decide_dataset(
        [_result("r50", "unet", list(BASE + 0.05), fractions=(truth, constant, 0.3)),
         _result("r18", "fpn", list(BASE), fractions=(truth, accurate, 0.3))],
        ranking_by=Ranking("area_fraction:fg", by="target"),
    )  # fmt: skip
    assert lazy is not None and lazy.recommended == "r18 + fpn"
    assert not lazy.ranking[1].beats_constant and lazy.verdict == "only one beats a constant"
    old = decide_dataset([_result("r50", "unet", list(BASE)), _result("r18", "fpn", list(BASE))],
                         ranking_by=Ranking("area_fraction:fg", by="target"))  # fmt: skip
    assert old is not None and old.ranked_by == "iou"  # results without quantities: IoU
    assert any("ranked by IoU" in n for n in old.notes)
    other = decide_dataset(results, ranking_by=Ranking("area_fraction:pore", by="target"))
    assert other is not None and other.ranked_by == "iou"  # no such class in this dataset
