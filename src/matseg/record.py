"""The evaluation record: one JSON file per run holding Z, Q and H with their provenance.

``RUN/record.json`` gathers what the run's steps wrote (jobs' metrics, curves and predicted
masks; quality control; explanations), per dataset and job, plus provenance: the profile and its
hash, package versions, matseg's git revision, seeds, hardware and time per job. It is validated
against :class:`EvaluationRecord` when written and when read (its JSON Schema is committed as
``docs/evaluation-record.schema.json``), and the report is built from it alone. Paths inside the
record are relative to the run folder, so a run folder can be moved or shared whole.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from matseg import __version__
from matseg.atomic import finite_or_none, write_bytes, write_json
from matseg.decision import (
    DatasetDecision,
    Halving,
    combination_name,
    decide_run,
    recommended_combinations,
)
from matseg.errors import MatsegError, read_json
from matseg.fields import first_problem
from matseg.plan import Job
from matseg.results import (
    EnsembleResult,
    JobResult,
    QuantityValues,
    SelectionGap,
    SplitResult,
    best_rows,
    ensemble_name,
    fold_groups,
    results_rows,
)
from matseg.rundir import (
    EXPLAIN_FIGURE,
    HEATMAP_FILE,
    OUTPUT_QC_FIGURE,
    OUTPUT_QC_FILE,
    QC_FILE,
    SCORES_FILE,
    DatasetFacts,
    RunDir,
)

SCHEMA_VERSION = 1
PACKAGES = (
    "torch", "torchvision", "segmentation-models-pytorch", "timm", "lightning", "numpy",
    "scikit-learn", "scipy", "pydantic",
)  # fmt: skip

Number = float | None  # NaN is written as null (JSON has no NaN)


class RecordError(MatsegError):
    """A run folder or record file cannot be turned into (or read as) an evaluation record."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provenance(_Model):
    """Where the numbers came from: enough to reproduce them or to doubt them."""

    profile_hash: str
    matseg_version: str
    git_revision: str | None = Field(description="matseg's commit; '+dirty' when modified")
    packages: dict[str, str]
    python: str
    platform: str
    machine: str
    processor: str
    threads: int | None
    gpu: str | None
    seeds: list[int]
    created: str = Field(description="when the record was written (UTC, ISO 8601)")


class DatasetContext(_Model):
    """The imaging context of one dataset: what the recommendation is conditioned on."""

    name: str
    modality: str
    material: str
    objective: str
    difficulty: str | None
    classes: list[str]
    splits: dict[str, int] = Field(description="images per split")
    fingerprint: dict[str, Any] | None = Field(description="matseg's dataset fingerprint")
    leakage_warnings: list[str]
    notes: list[str] = Field(
        default_factory=list, description="e.g. data unreadable at record time"
    )


class ImageScore(_Model):
    """One test image: its scores and where its predicted mask is."""

    key: str
    source: str
    mask: str = Field(description="predicted class-id PNG, relative to the run folder")
    macro_iou: Number
    foreground_iou: Number
    pixel_accuracy: Number
    iou_per_class: dict[str, Number]


class SplitEvaluation(_Model):
    """The ONE evaluation of a job on a split: dataset-level scores with CIs, baselines, images."""

    split: str
    n_images: int
    macro_iou: Number
    foreground_iou: Number
    dice: Number
    pixel_accuracy: Number
    weighted_iou: Number
    iou_per_class: dict[str, Number]
    ci: dict[str, list[Number]] = Field(description="metric -> [low, high], bootstrap 95%")
    baselines: dict[str, dict[str, Number]] = Field(description="baseline -> its scores")
    images: list[ImageScore]
    quantities: dict[str, QuantityValues] = Field(
        default_factory=dict,
        description="'quantity:class' -> truth and prediction per image (absent before 0.3.1)",
    )


class CurvePoint(_Model):
    epoch: int
    train_loss: Number
    val_iou: Number
    lr: Number
    seconds: Number


class JobRecord(_Model):
    """One trained combination (dataset x encoder x decoder x weights x seed)."""

    hash: str
    label: str
    dataset: str
    encoder: str
    decoder: str
    weights: str
    seed: int
    parameters: int
    latency_ms_256: Number
    train_seconds: Number
    epochs: int
    best_epoch: int
    best_val_iou: Number
    stopped_by: str
    converged: bool | None = Field(
        default=None,
        description="False: a budget stopped training while validation IoU was still rising "
        "(none in records written before matseg 0.2)",
    )
    weights_loaded: dict[str, Any]
    curves: list[CurvePoint]
    evaluations: dict[str, SplitEvaluation]
    folder: str


class EnsembleRecord(_Model):
    """A combination's fold ensemble (cross-validation), scored once on the test split and
    shift sets after the decision; ``used_for_choice`` is always False, and says so."""

    hash: str
    dataset: str
    name: str
    encoder: str
    decoder: str
    weights: str
    members: list[str]
    evaluations: dict[str, SplitEvaluation]
    members_macro_iou: dict[str, dict[str, Number]] = Field(
        description="split -> member job -> its macro IoU alone on the same images"
    )
    members_per_image: dict[str, list[Number]] = Field(
        description="split -> per-image macro IoU, mean of the members alone"
    )
    selection_gap: SelectionGap | None = Field(
        default=None,
        description="fold models alone on test minus their out-of-fold IoU, with its 95% CI",
    )
    folder: str
    used_for_choice: Literal[False] = False


class FlaggedImage(_Model):
    scenario: str
    image: str
    score: Number
    patches: int
    patches_flagged: int


class QualityRecord(_Model):
    """Quality control of one job: per-scenario detection metrics, the verdict, flagged images."""

    job: str
    dataset: str
    detector: str
    ready: bool
    reason: str
    ready_auroc: float
    failing: dict[str, Number] = Field(description="scenario -> AUROC below ready_auroc")
    thresholds: dict[str, float]
    scenarios: dict[str, dict[str, dict[str, Any]]] = Field(
        description="scenario -> detector -> AUROC, FPR@95, AUPR, F1, precision, recall, ..."
    )
    synthetic: dict[str, dict[str, dict[str, Any]]]
    id_test_images_flagged: dict[str, Number]
    flagged_images: list[FlaggedImage]
    output_qc: dict[str, Any] | None
    figure: str | None
    skipped_detectors: dict[str, str] = Field(
        default_factory=dict,
        description="compared detector -> why it could not be fitted (too little data)",
    )


class ExplanationRecord(_Model):
    """One counterfactual heatmap H with its expert region and its faithfulness."""

    job: str
    dataset: str
    image: str
    roi: str
    kernel: str
    window: int
    stride: int
    seconds: Number
    faithfulness_auc_ratio: Number
    faithfulness: dict[str, Any] | None
    concentration: dict[str, Number]
    heatmap: str
    figure: str


class RunInfo(_Model):
    name: str
    description: str
    profile: dict[str, Any]


class EvaluationRecord(_Model):
    """Z (masks and metrics), Q (quality signals), H (heatmaps) and provenance of one run."""

    schema_version: Literal[1] = SCHEMA_VERSION
    run: RunInfo
    provenance: Provenance
    datasets: list[DatasetContext]
    jobs: list[JobRecord]
    quality: list[QualityRecord]
    explanations: list[ExplanationRecord]
    figures: dict[str, str] = Field(
        default_factory=dict, description="job hash -> sample predictions figure (relative path)"
    )
    missing: list[str] = Field(description="what this run does not have (said in the report)")
    warnings: list[str] = Field(
        default_factory=list,
        description="what limits the run's numbers (time budgets, unconverged jobs), said first",
    )
    decisions: list[DatasetDecision] = Field(
        default_factory=list,
        description="per dataset: the ranking on out-of-fold (or validation) evidence, paired "
        "tests, verdict and recommendation (none in records before matseg 0.3)",
    )
    ensembles: list[EnsembleRecord] = Field(
        default_factory=list, description="fold ensembles scored on the test split (cv runs)"
    )
    halving: Halving | None = Field(
        default=None, description="the rungs of a successive-halving search, if one ran"
    )


def record_json_schema() -> dict[str, Any]:
    """The JSON Schema of a record (committed as docs/evaluation-record.schema.json)."""
    return EvaluationRecord.model_json_schema()


# --- reading the run folder ---------------------------------------------------------------------


def _budget_warnings(profile: dict[str, Any], finished: list[JobResult]) -> list[str]:
    """A time budget makes results depend on the machine; an unconverged job is not its best."""
    out = []
    minutes = profile.get("training", {}).get("max_minutes")
    timed = [r for r in finished if r.stopped_by == "time budget"]
    if minutes or timed:
        out.append(
            "time-budgeted: results depend on the machine (training.max_minutes = "
            f"{minutes}; {len(timed)} of {len(finished)} jobs stopped by it); budget in "
            "max_epochs for numbers another machine reproduces"
        )
    unsettled = [r.job.label() for r in finished if not r.converged]
    if unsettled:
        out.append(
            f"not converged: {len(unsettled)} of {len(finished)} jobs were stopped by their "
            f"budget while validation IoU was still rising ({', '.join(unsettled[:4])}"
            + (", ..." if len(unsettled) > 4 else "")
            + "); no 'better' verdict involves them; train longer"
        )
    return out


def _git_revision() -> str | None:
    """matseg's commit when it runs from a git checkout (an editable install), else None."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}+dirty" if dirty else rev


def _packages() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _provenance(profile_hash: str, jobs: list[Job], results: list[JobResult]) -> Provenance:
    first = results[0].provenance.model_dump() if results else {}
    return Provenance(
        profile_hash=profile_hash,
        matseg_version=__version__,
        git_revision=_git_revision(),
        packages=_packages(),
        python=platform.python_version(),
        platform=platform.platform(),
        machine=first.get("machine", platform.machine()),
        processor=first.get("processor", platform.processor()),
        threads=first.get("threads"),
        gpu=_gpu(),
        seeds=sorted({j.seed for j in jobs}),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


def _dataset_context(
    job: Job, task: dict[str, Any], classes: list[str], facts: DatasetFacts | None
) -> DatasetContext:
    """The dataset's context, from the fingerprint the run wrote when it inspected the data."""
    spec = job.spec
    notes = (
        []
        if facts is not None
        else ["no dataset fingerprint in this run folder (written before matseg 0.2)"]
    )
    return DatasetContext(
        name=job.dataset,
        modality=str(spec.modality),
        material=spec.material,
        objective=task.get("objective", ""),
        difficulty=task.get("difficulty"),
        classes=classes,
        splits=facts.splits if facts else {},
        fingerprint=finite_or_none(facts.fingerprint) if facts else None,
        leakage_warnings=facts.leakage_warnings if facts else [],
        notes=notes + (facts.fold_notes if facts else []),
    )


def _curves(run: RunDir, job: str) -> list[CurvePoint]:
    return [
        CurvePoint(
            epoch=int(r["epoch"] or 0),
            train_loss=r["train_loss"],
            val_iou=r["val_iou"],
            lr=r["lr"],
            seconds=r["seconds"],
        )
        for r in run.read_curves(job)
    ]


def _split_evaluation(
    run: RunDir, split: str, ev: SplitResult, mask_of: Callable[[str], Path]
) -> SplitEvaluation:
    s = ev.scores
    per = s.per_image
    classes = s.classes
    n = len(ev.images)

    def column(values: list[Any], missing: Any = None) -> list[Any]:
        return values or [missing] * n

    images = [
        ImageScore(
            key=meta.key,
            source=meta.source,
            mask=run.relative(mask_of(meta.key)),
            macro_iou=macro,
            foreground_iou=fg,
            pixel_accuracy=acc,
            iou_per_class=dict(zip(classes, row, strict=True)),
        )
        for meta, macro, fg, acc, row in zip(
            ev.images,
            column(per.macro_iou),
            column(per.foreground_iou),
            column(per.pixel_accuracy),
            column(per.iou, [None] * len(classes)),
            strict=True,
        )
    ]
    baselines = {
        name: {
            "macro_iou": b.macro_iou,
            "foreground_iou": b.foreground_iou,
            "pixel_accuracy": b.pixel_accuracy,
            "macro_dice": b.macro_dice,
        }
        for name, b in ev.baselines.items()
    }
    return SplitEvaluation(
        split=split,
        n_images=ev.n_images,
        macro_iou=s.macro_iou,
        foreground_iou=s.foreground_iou,
        dice=s.macro_dice,
        pixel_accuracy=s.pixel_accuracy,
        weighted_iou=s.weighted_iou,
        iou_per_class=s.iou_per_class,
        ci=s.ci,
        baselines=baselines,
        images=images,
        quantities=ev.quantities,
    )


def _job_record(run: RunDir, result: JobResult) -> JobRecord:
    job = result.job
    return JobRecord(
        hash=job.hash,
        label=job.label(),
        dataset=job.dataset,
        encoder=job.encoder,
        decoder=job.decoder,
        weights=job.weights,
        seed=job.seed,
        parameters=result.parameters,
        latency_ms_256=result.latency_ms_256,
        train_seconds=result.train_seconds,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        best_val_iou=result.best_val_iou,
        stopped_by=result.stopped_by,
        converged=result.converged,
        weights_loaded=result.weights.model_dump(),
        curves=_curves(run, job.hash),
        evaluations={
            split: _split_evaluation(run, split, ev, partial(run.prediction_file, job.hash, split))
            for split, ev in result.evaluations.items()
        },
        folder=run.relative(run.job_dir(job.hash)),
    )


def _quality(run: RunDir, datasets: dict[str, str]) -> list[QualityRecord]:
    out = []
    for job in run.qc_jobs():
        qc_file = run.qc_file(job, QC_FILE)
        data = finite_or_none(read_json(qc_file, "a quality-control result (qc.json)", RecordError))
        verdict = data["verdict"]
        flagged = []
        scores = run.qc_file(job, SCORES_FILE)
        if scores.is_file():
            for row in csv.DictReader(scores.read_text(encoding="utf-8").splitlines()):
                if row["flagged"] == "True":
                    flagged.append(
                        FlaggedImage(
                            scenario=row["scenario"],
                            image=row["image"],
                            score=float(row["score"]),
                            patches=int(row["patches"]),
                            patches_flagged=int(row["patches_flagged"]),
                        )
                    )
        output_file = run.qc_file(job, OUTPUT_QC_FILE)
        output = (
            finite_or_none(read_json(output_file, "an output QC result", RecordError))
            if output_file.is_file()
            else None
        )
        figure = run.qc_file(job, OUTPUT_QC_FIGURE)
        out.append(
            QualityRecord(
                job=job,
                dataset=datasets.get(job, ""),
                detector=verdict["detector"],
                ready=bool(verdict["ready"]),
                reason=verdict["reason"],
                ready_auroc=float(verdict["ready_auroc"]),
                failing=verdict.get("failing", {}),
                thresholds=data.get("thresholds", {}),
                scenarios=data.get("scenarios", {}),
                synthetic=data.get("synthetic", {}),
                id_test_images_flagged=data.get("id_test_images_flagged", {}),
                skipped_detectors=data.get("skipped_detectors", {}),
                flagged_images=flagged,
                output_qc=output,
                figure=run.relative(figure) if figure.is_file() else None,
            )
        )
    return out


def _explanations(run: RunDir, datasets: dict[str, str]) -> list[ExplanationRecord]:
    out = []
    for path in run.explanation_files():
        data = finite_or_none(read_json(path, "an explanation result (explain.json)", RecordError))
        faith = data.get("faithfulness")
        out.append(
            ExplanationRecord(
                job=data["job"],
                dataset=datasets.get(data["job"], ""),
                image=data["image"],
                roi=str(data.get("roi", "whole image")),
                kernel=data["kernel"],
                window=int(data["window"]),
                stride=int(data["stride"]),
                seconds=data.get("seconds"),
                faithfulness_auc_ratio=faith.get("auc_ratio") if faith else None,
                faithfulness=faith,
                concentration=data.get("concentration", {}),
                heatmap=run.relative(path.parent / HEATMAP_FILE),
                figure=run.relative(path.parent / EXPLAIN_FIGURE),
            )
        )
    return out


def build_record(run: RunDir | Path) -> EvaluationRecord:
    """Gather a run folder's results into a validated record: a pure read of the folder (no
    data is re-inspected, nothing is drawn or recomputed)."""
    run = run if isinstance(run, RunDir) else RunDir.existing(run)
    plan = run.read_plan()
    profile = run.read_profile_data()
    finished = run.results(plan)
    if not finished:
        raise RecordError(str(run.root), "a run with at least one finished job", "none finished")
    facts = run.read_fingerprints()
    task = profile.get("task", {})
    contexts, seen = [], set()
    for result in finished:
        if result.job.dataset not in seen:
            seen.add(result.job.dataset)
            contexts.append(
                _dataset_context(result.job, task, result.classes, facts.get(result.job.dataset))
            )
    by_job = {r.job.hash: r.job.dataset for r in finished}
    by_job |= {ensemble_name(m): c[0] for c, m in fold_groups(finished).items()}
    quality, explanations = _quality(run, by_job), _explanations(run, by_job)
    decisions = decide_run(run, finished)
    figures = {
        row["job"]: run.relative(run.sample_figure(row["job"]))
        for row in best_rows(results_rows(finished), recommended_combinations(decisions))
        if run.sample_figure(row["job"]).is_file()
    }
    missing = []
    if len(finished) < len(plan.jobs):
        missing.append(f"{len(plan.jobs) - len(finished)} of {len(plan.jobs)} jobs not finished")
    if not quality:
        missing.append("no quality control (set qc.enabled or run `matseg qc fit`)")
    if not explanations:
        missing.append("no explanations (set explain.enabled or run `matseg explain`)")
    warnings = _budget_warnings(profile, finished) + _protocol_warnings(decisions)
    return EvaluationRecord(
        run=RunInfo(
            name=plan.profile_name, description=profile.get("description", ""), profile=profile
        ),
        provenance=_provenance(plan.profile_hash, [r.job for r in finished], finished),
        datasets=contexts,
        jobs=[_job_record(run, _nan_free(r)) for r in finished],
        quality=quality,
        explanations=explanations,
        figures=figures,
        missing=missing,
        warnings=warnings,
        decisions=decisions,
        ensembles=[_ensemble_record(run, e) for e in run.ensembles()],
        halving=(
            Halving.model_validate(read_json(run.halving_file, "halving.json", RecordError))
            if run.halving_file.is_file()
            else None
        ),
    )


def _ensemble_record(run: RunDir, e: EnsembleResult) -> EnsembleRecord:
    e = EnsembleResult.model_validate(finite_or_none(e.model_dump()))
    return EnsembleRecord(
        hash=e.hash, dataset=e.dataset, name=combination_name(e.encoder, e.decoder, e.weights),
        encoder=e.encoder, decoder=e.decoder, weights=e.weights, members=e.members,
        evaluations={
            split: _split_evaluation(
                run, split, ev, partial(run.ensemble_prediction_file, e.hash, split)
            )
            for split, ev in e.evaluations.items()
        },
        members_macro_iou=e.members_macro_iou, members_per_image=e.members_per_image,
        selection_gap=e.selection_gap, folder=run.relative(run.ensemble_dir(e.hash)),
    )  # fmt: skip


def _protocol_warnings(decisions: list[DatasetDecision]) -> list[str]:
    """What the evaluation protocol leaves unestimated or optimistic."""
    out = []
    for d in decisions:
        if not d.test_kept:
            out.append(
                f"{d.dataset}: every labelled image went into cross-validation (evaluation.test "
                "= none): no untouched test estimate exists; the out-of-fold estimate is the "
                "only one"
            )
        if d.evidence == "test":
            out.append(f"{d.dataset}: {d.notes[-1]}")
    return out


def _nan_free(result: JobResult) -> JobResult:
    """The result with every NaN as None (JSON, and the record, have no NaN)."""
    return JobResult.model_validate(finite_or_none(result.model_dump()))


def write_record(run: RunDir | Path, record: EvaluationRecord | None = None) -> Path:
    """Validate and write the run's ``record.json`` atomically; return its path."""
    run = run if isinstance(run, RunDir) else RunDir.existing(run)
    record = record if record is not None else build_record(run)
    data = record.model_dump(mode="json")
    EvaluationRecord.model_validate(data)  # what is written must read back
    return write_json(run.record_file, data)


def read_record(path: Path) -> EvaluationRecord:
    """A record from ``record.json`` (or a run folder holding one), validated; errors one line."""
    path = RunDir(path).record_file if Path(path).is_dir() else Path(path)
    data = read_json(
        path, "an evaluation record (record.json)", RecordError, "run `matseg report RUN`"
    )
    try:
        return EvaluationRecord.model_validate(data)
    except ValidationError as exc:
        where, expected, found = first_problem(exc)
        raise RecordError(
            f"{path}: {where}", expected, found, "rebuild it with `matseg report RUN`"
        ) from None


def dump_schema(path: Path) -> Path:
    """Write the record's JSON Schema (for docs/)."""
    return write_bytes(path, (json.dumps(record_json_schema(), indent=2) + "\n").encode())
