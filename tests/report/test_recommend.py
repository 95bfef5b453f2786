"""The recommendation's statistics on records built by hand (known answers)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from builders import job_result
from matseg.decision import Ranking, decide
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
from matseg.report.recommend import recommend
from matseg.report.tables import best_table, grid_table, ranking_table
from matseg.results import JobResult, QuantityValues, converged, late_gain


def _job(dataset: str, encoder: str, decoder: str, ious: list[float], params: int) -> JobResult:
    return job_result(encoder, decoder, ious, params, dataset=dataset)


def _job_record(result: JobResult, converged: bool | None = None, epochs: int = 1) -> JobRecord:
    """The record's view of a job (test evaluation from the same per-image scores)."""
    ev = result.evaluations["oof"]
    images = [
        ImageScore(key=i.key, source="", mask="", macro_iou=None, foreground_iou=None,
                   pixel_accuracy=None, iou_per_class={})
        for i in ev.images
    ]  # fmt: skip
    test = SplitEvaluation(
        split="test", n_images=len(images), macro_iou=0.5, foreground_iou=None, dice=None,
        pixel_accuracy=None, weighted_iou=None, iou_per_class={}, ci={}, baselines={},
        images=images,
    )  # fmt: skip
    j = result.job
    return JobRecord(
        hash=j.hash, label="", dataset=j.dataset, encoder=j.encoder, decoder=j.decoder,
        weights=j.weights, seed=j.seed, parameters=result.parameters, latency_ms_256=10.0,
        train_seconds=1.0, epochs=epochs, best_epoch=0, best_val_iou=0.5, stopped_by="",
        converged=converged, weights_loaded={}, curves=[], evaluations={"test": test}, folder="",
    )  # fmt: skip


def _context(name: str, modality: str, difficulty: str) -> DatasetContext:
    return DatasetContext(name=name, modality=modality, material="", objective="",
                          difficulty=difficulty, classes=["a", "b"], splits={},
                          fingerprint=None, leakage_warnings=[])  # fmt: skip


def _record(
    results: list[JobResult], contexts: list[DatasetContext], quality=(), ranking=None
) -> EvaluationRecord:
    prov = Provenance(profile_hash="x", matseg_version="0", git_revision=None, packages={},
                      python="3.11", platform="", machine="", processor="", threads=1, gpu=None,
                      seeds=[0], created="")  # fmt: skip
    return EvaluationRecord(run=RunInfo(name="r", description="", profile={}), provenance=prov,
                            datasets=contexts, jobs=[_job_record(r) for r in results],
                            quality=list(quality), explanations=[], missing=[],
                            decisions=decide(results, ranking_by=ranking or Ranking()))  # fmt: skip


RNG = np.random.default_rng(0)
BASE = RNG.uniform(0.5, 0.8, size=20)


def test_the_report_words_the_decision_with_its_protocol() -> None:
    results = [
        _job("sem", "r50", "unet", list(BASE + 0.10 + RNG.normal(0, 0.01, 20)), 30_000_000),
        _job("sem", "r18", "fpn", list(BASE), 10_000_000),
    ]
    d = recommend(_record(results, [_context("sem", "SEM", "Easy")])).datasets[0]
    assert d.verdict == "better" and d.use == "r50 + unet"
    assert d.protocol.startswith("5-fold cross-validation of the 20 development images")
    assert "the dataset has no test split" in d.protocol
    assert [c.name for c in d.ranking] == ["r50 + unet", "r18 + fpn"]


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
            [j for j in jobs if j.job.encoder != "e3"],
            [_context("sem", "SEM", "Easy"), _context("xct", "XCT", "Hard")],
        )
    )
    assert "can only agree or flip" in two.contexts.summary
    assert rec.contexts.decoder_wins_by_modality == {"SEM": {"fpn": 1}, "XCT": {"unet": 1}}
    assert rec.contexts.decoder_wins_by_difficulty == {"Easy": {"fpn": 1}, "Very Hard": {"unet": 1}}
    assert rec.contexts.spread == pytest.approx(0.2, abs=1e-4)  # BASE + 0.2 vs BASE


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
    d = recommend(_record([_job("d", "a", "unet", [0.5, 0.6, 0.7, 0.8, 0.9, 0.95], 1)],
                          [_context("d", "SEM", "Easy")]))  # fmt: skip
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
    assert converged(stopped_by, epochs, best_epoch) is expected  # results before 0.3


def test_a_late_gain_below_the_tie_margin_is_converged() -> None:
    """Cosine annealing keeps adding thousandths of IoU to the end: not "still rising"."""
    flat = [0.5, 0.8, 0.9, 0.95, 0.96, 0.965, 0.968, 0.97]
    assert late_gain(flat) == pytest.approx(0.97 - 0.965)
    assert converged("max epochs", 8, 7, late_gain(flat))
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert late_gain(rising) == pytest.approx(0.2)
    assert not converged("max epochs", 8, 7, late_gain(rising))
    assert converged("early stopping", 8, 7, late_gain(rising))
    assert late_gain([0.5]) is None


def test_every_table_marks_an_unconverged_job() -> None:
    result = job_result("r50", "unet", list(BASE), converged=False)
    record = _record([result], [_context("sem", "SEM", "Easy")])
    record.jobs[0] = _job_record(result, converged=False, epochs=3)
    header, rows = grid_table(record)
    assert rows[0][header.index("epochs")] == "3 (not converged)"
    header, rows = best_table(recommend(record))
    assert rows[0][header.index("converged")] == "not converged"


def test_time_budgets_and_unconverged_jobs_are_warned() -> None:
    job = SimpleNamespace(label=lambda: "sem r50 + unet")
    timed = SimpleNamespace(stopped_by="time budget", converged=False, job=job)
    settled = SimpleNamespace(stopped_by="early stopping", converged=True, job=job)
    warnings = _budget_warnings({"training": {"max_minutes": 2}}, [timed, settled])
    assert warnings[0].startswith("time-budgeted: results depend on the machine")
    assert "1 of 2 jobs stopped by it" in warnings[0]
    assert warnings[1].startswith("not converged: 1 of 2 jobs") and "sem r50 + unet" in warnings[1]
    assert _budget_warnings({"training": {"max_epochs": 40}}, [settled]) == []


def test_the_ranking_table_carries_the_targets_error_beside_iou() -> None:
    truth = list(RNG.uniform(0.2, 0.4, 20))
    results = [
        job_result("r50", "unet", list(BASE + 0.05), dataset="sem",
                   fractions=(truth, [t + 0.05 for t in truth], 0.3)),
        job_result("r18", "fpn", list(BASE), dataset="sem",
                   fractions=(truth, [t + 0.01 for t in truth], 0.3)),
    ]  # fmt: skip
    rec = recommend(_record(results, [_context("sem", "SEM", "Hard")],
                            ranking=Ranking("area_fraction:fg", by="target")))  # fmt: skip
    (d,) = rec.datasets
    assert d.use == "r18 + fpn"
    header, rows = ranking_table(d)
    assert header[1:4] == ["area_fraction:fg error", "95% CI (error)", "area_fraction:fg bias"]
    assert rows[0][0] == "r18 + fpn" and rows[0][1] == "0.01" and rows[1][3] == "0.05"
    header, rows = best_table(rec)  # Table 2: the target's error beside IoU, and what ranked
    at = header.index("target error")
    assert rows[0][at] == "0.01" and rows[0][header.index("ranked by")] == "area_fraction:fg"
    assert rows[0][header.index("constant IoU")] != "–"  # the IoU constant, not the target's
    assert float(rows[0][header.index("constant IoU")]) > 0
    record = _record(results, [_context("sem", "SEM", "Hard")])
    record.run.profile = {"task": {"target": "area_fraction"}}  # the class left to the data
    record.jobs[0].evaluations["test"].quantities = {
        "area_fraction:fg": QuantityValues(unit="1", truth=[0.2, 0.4], predicted=[0.3, 0.3])
    }
    from matseg.report import figures

    assert figures.size_distributions(rec) is None  # no distributions kept: no chart
    rec.datasets[0].recommended.test_quantities = {
        "feature_size:fg": QuantityValues(unit="µm", truth=[1.0], predicted=[1.5],
                                          truth_distribution=[[1.0, 1.0], [2.0, 1.0]],
                                          predicted_distribution=[[1.5, 1.0]])
    }  # fmt: skip
    assert figures.size_distributions(rec)[:4] == b"\x89PNG"
    assert figures.quantities_truth_vs_prediction(rec)[:4] == b"\x89PNG"
    header, rows = grid_table(record)  # Table 3: each evaluation's target error
    at = header.index("area_fraction error")
    assert rows[0][at] == "0.1" and rows[1][at] == "–"
