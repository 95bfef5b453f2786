"""The recommendation's statistics on records built by hand (known answers)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from matseg.record import (
    DatasetContext,
    EvaluationRecord,
    ImageScore,
    JobRecord,
    Provenance,
    QualityRecord,
    RunInfo,
    SplitEvaluation,
    _budget_warnings,
)
from matseg.report.recommend import candidates, paired_test, recommend
from matseg.report.tables import best_table, grid_table
from matseg.results import converged


def _job(dataset: str, encoder: str, decoder: str, ious: list[float], params: int) -> JobRecord:
    images = [
        ImageScore(key=f"img{i}", source="", mask="", macro_iou=v, foreground_iou=v,
                   pixel_accuracy=v, iou_per_class={"a": v})
        for i, v in enumerate(ious)
    ]  # fmt: skip
    ev = SplitEvaluation(
        split="test", n_images=len(ious), macro_iou=float(np.mean(ious)), foreground_iou=None,
        dice=None, pixel_accuracy=None, weighted_iou=None, iou_per_class={}, ci={},
        baselines={}, images=images,
    )  # fmt: skip
    return JobRecord(
        hash=f"{dataset}-{encoder}-{decoder}", label="", dataset=dataset, encoder=encoder,
        decoder=decoder, weights="none", seed=0, parameters=params, latency_ms_256=10.0,
        train_seconds=1.0, epochs=1, best_epoch=0, best_val_iou=0.5, stopped_by="",
        weights_loaded={}, curves=[], evaluations={"test": ev}, folder="",
    )  # fmt: skip


def _context(name: str, modality: str, difficulty: str) -> DatasetContext:
    return DatasetContext(name=name, modality=modality, material="", objective="",
                          difficulty=difficulty, classes=["a", "b"], splits={},
                          fingerprint=None, leakage_warnings=[])  # fmt: skip


def _record(jobs: list[JobRecord], contexts: list[DatasetContext], quality=()) -> EvaluationRecord:
    prov = Provenance(profile_hash="x", matseg_version="0", git_revision=None, packages={},
                      python="3.11", platform="", machine="", processor="", threads=1, gpu=None,
                      seeds=[0], created="")  # fmt: skip
    return EvaluationRecord(run=RunInfo(name="r", description="", profile={}), provenance=prov,
                            datasets=contexts, jobs=jobs, quality=list(quality),
                            explanations=[], missing=[])  # fmt: skip


RNG = np.random.default_rng(0)
BASE = RNG.uniform(0.5, 0.8, size=20)


def test_clear_winner_is_better_and_recommended() -> None:
    jobs = [
        _job("sem", "r50", "unet", list(BASE + 0.10 + RNG.normal(0, 0.01, 20)), 30_000_000),
        _job("sem", "r18", "fpn", list(BASE), 10_000_000),
    ]
    rec = recommend(_record(jobs, [_context("sem", "SEM", "Easy")]))
    d = rec.datasets[0]
    assert d.verdict == "better"
    assert d.recommended.name == "r50 + unet"
    assert d.test is not None and d.test.significant
    assert d.test.ci[0] > 0.05 and d.test.p_wilcoxon is not None and d.test.p_wilcoxon < 1e-3


def test_tie_prefers_the_cheaper_model() -> None:
    noise = RNG.normal(0, 0.02, 20)
    jobs = [
        _job("sem", "big", "unet", list(BASE + 0.002 + noise), 50_000_000),
        _job("sem", "small", "unet", list(BASE - noise), 5_000_000),
    ]
    d = recommend(_record(jobs, [_context("sem", "SEM", "Easy")])).datasets[0]
    assert d.ranking[0].encoder == "big"  # higher mean IoU ...
    assert d.verdict == "tie"
    assert d.recommended.encoder == "small"  # ... but not significantly: the cheaper one
    assert any("prefer the cheapest" in r for r in d.reasons)


def test_paired_test_matches_scipy_wilcoxon_and_says_when_too_few_images() -> None:
    a = _job("d", "a", "unet", [0.9, 0.8, 0.85, 0.7], 1)
    b = _job("d", "b", "unet", [0.6, 0.5, 0.55, 0.4], 1)
    ca, cb = (candidates(_record([j], [_context("d", "SEM", "Easy")]), "d")[0] for j in (a, b))
    t = paired_test(ca, cb)
    expected = stats.wilcoxon([0.3, 0.3, 0.3, 0.3]).pvalue
    assert t.p_wilcoxon == pytest.approx(expected)
    assert t.mean_difference == pytest.approx(0.3)
    assert not t.significant and not t.testable  # 4 images: no test can reach 0.05
    assert "smallest possible Wilcoxon p = 0.125" in t.note


def test_too_few_images_is_inconclusive_and_keeps_the_best() -> None:
    jobs = [
        _job("d", "big", "unet", [0.9, 0.8, 0.85, 0.7], 50_000_000),
        _job("d", "small", "unet", [0.6, 0.5, 0.55, 0.4], 1_000_000),
    ]
    d = recommend(_record(jobs, [_context("d", "SEM", "Easy")])).datasets[0]
    assert d.verdict == "inconclusive"
    assert d.recommended.encoder == "big"  # not the cheaper, clearly worse one
    assert any("label more test images" in r for r in d.reasons)


def test_kendall_tau_across_contexts_and_decoder_wins() -> None:
    combos = [("e1", "unet"), ("e2", "deeplabv3plus"), ("e3", "fpn")]
    jobs = []
    for k, (enc, dec) in enumerate(combos):
        jobs.append(_job("sem", enc, dec, list(BASE + 0.1 * k), 1))  # e3 best on SEM
        jobs.append(_job("xct", enc, dec, list(BASE - 0.1 * k), 1))  # e1 best on XCT
    rec = recommend(
        _record(jobs, [_context("sem", "SEM", "Easy"), _context("xct", "XCT", "Very Hard")])
    )
    (pair,) = rec.contexts.kendall
    assert pair["tau"] == pytest.approx(-1.0)  # reversed rankings
    assert pair["tau"] == pytest.approx(stats.kendalltau([1, 2, 3], [3, 2, 1]).statistic)
    assert rec.contexts.mean_tau == pytest.approx(-1.0)
    assert "context determines" in rec.contexts.summary
    two = recommend(
        _record(
            [j for j in jobs if j.encoder != "e3"],
            [_context("sem", "SEM", "Easy"), _context("xct", "XCT", "Hard")],
        )
    )
    assert "can only agree or flip" in two.contexts.summary  # fmt: skip
    assert rec.contexts.decoder_wins_by_modality == {"SEM": {"fpn": 1}, "XCT": {"unet": 1}}
    assert rec.contexts.decoder_wins_by_difficulty == {"Easy": {"fpn": 1}, "Very Hard": {"unet": 1}}
    assert rec.contexts.spread == pytest.approx(0.2, abs=1e-9)  # BASE + 0.2 vs BASE


def test_seeds_are_pooled_per_combination() -> None:
    j1 = _job("d", "e", "unet", [0.5, 0.7], 1)
    j2 = _job("d", "e", "unet", [0.7, 0.9], 1).model_copy(update={"seed": 1, "hash": "other"})
    (c,) = candidates(_record([j1, j2], [_context("d", "SEM", "Easy")]), "d")
    assert c.iou == pytest.approx(0.7)
    assert c.per_image == {"img0": pytest.approx(0.6), "img1": pytest.approx(0.8)}
    assert sorted(c.jobs) == ["d-e-unet", "other"]


def test_not_ready_names_the_failing_shift_and_what_to_revise() -> None:
    jobs = [_job("sem", "a", "unet", list(BASE), 1), _job("sem", "b", "fpn", list(BASE - 0.1), 1)]
    q = QualityRecord(
        job="sem-a-unet", dataset="sem", detector="mahalanobis", ready=False,
        reason="shift not reliably detected", ready_auroc=0.95,
        failing={"split:different_test": 0.81, "synthetic blur@0.5": 0.7}, thresholds={},
        scenarios={}, synthetic={}, id_test_images_flagged={}, flagged_images=[],
        output_qc=None, figure=None,
    )  # fmt: skip
    (fb,) = recommend(_record(jobs, [_context("sem", "SEM", "Easy")], [q])).feedback
    assert not fb.ready
    text = " ".join(fb.advice)
    assert "'split:different_test' is not reliably detected (AUROC 0.810" in text
    assert "blurred augmentations" in text  # the blur shift's own remedy
    assert "b + fpn" in text  # another architecture to try


def test_one_combination_is_reported_as_such() -> None:
    d = recommend(_record([_job("d", "a", "unet", [0.5], 1)], [_context("d", "SEM", "Easy")]))
    assert d.datasets[0].verdict == "only one combination"
    assert math.isnan(d.contexts.spread or math.nan)


# --- training budgets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stopped_by", "epochs", "best_epoch", "expected"),
    [
        ("early stopping", 30, 29, True),  # patience ran out: settled by definition
        ("max epochs", 40, 39, False),  # still improving at the last epoch
        ("max epochs", 40, 30, False),  # best in the last quarter
        ("max epochs", 40, 29, True),  # ten epochs without a better one
        ("time budget", 1, 0, False),  # stopped after one epoch
        ("time budget", 12, 3, True),
    ],
)
def test_converged_means_validation_iou_had_stopped_rising(
    stopped_by: str, epochs: int, best_epoch: int, expected: bool
) -> None:
    assert converged(stopped_by, epochs, best_epoch) is expected


def test_no_better_verdict_when_a_side_did_not_converge() -> None:
    winner = _job("sem", "r50", "unet", list(BASE + 0.10 + RNG.normal(0, 0.01, 20)), 30_000_000)
    other = _job("sem", "r18", "fpn", list(BASE), 10_000_000)
    for unsettled in (winner, other):
        jobs = [j.model_copy(update={"converged": j is not unsettled}) for j in (winner, other)]
        d = recommend(_record(jobs, [_context("sem", "SEM", "Easy")])).datasets[0]
        assert d.test is not None and d.test.significant  # the numbers alone would say better
        assert d.verdict == "inconclusive" and d.recommended.name == "r50 + unet"
        assert any("not converged" in r and "train longer" in r for r in d.reasons)
    settled = [j.model_copy(update={"converged": True}) for j in (winner, other)]
    assert recommend(_record(settled, [_context("sem", "SEM", "Easy")])).datasets[0].verdict == (
        "better"
    )


def test_every_table_marks_an_unconverged_job() -> None:
    job = _job("sem", "r50", "unet", list(BASE), 1).model_copy(
        update={"converged": False, "epochs": 3}
    )
    record = _record([job], [_context("sem", "SEM", "Easy")])
    for table in (grid_table(record), best_table(record)):
        header, rows = table
        assert rows[0][header.index("epochs")] == "3 (not converged)"


def test_time_budgets_and_unconverged_jobs_are_warned() -> None:
    job = SimpleNamespace(label=lambda: "sem r50 + unet")
    timed = SimpleNamespace(stopped_by="time budget", converged=False, job=job)
    settled = SimpleNamespace(stopped_by="early stopping", converged=True, job=job)
    warnings = _budget_warnings({"training": {"max_minutes": 2}}, [timed, settled])
    assert warnings[0].startswith("time-budgeted: results depend on the machine")
    assert "1 of 2 jobs stopped by it" in warnings[0]
    assert warnings[1].startswith("not converged: 1 of 2 jobs") and "sem r50 + unet" in warnings[1]
    assert _budget_warnings({"training": {"max_epochs": 40}}, [settled]) == []
