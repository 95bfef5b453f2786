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
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from matseg import __version__
from matseg.atomic import write_bytes, write_json
from matseg.errors import MatsegError, read_json
from matseg.execution.job import prediction_file
from matseg.plan import Job
from matseg.results import read_job_metrics

RECORD_FILE = "record.json"
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
    weights_loaded: dict[str, Any]
    curves: list[CurvePoint]
    evaluations: dict[str, SplitEvaluation]
    folder: str


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


def record_json_schema() -> dict[str, Any]:
    """The JSON Schema of a record (committed as docs/evaluation-record.schema.json)."""
    return EvaluationRecord.model_json_schema()


# --- reading the run folder ---------------------------------------------------------------------


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


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


def _provenance(profile_hash: str, jobs: list[Job], metrics: list[dict[str, Any]]) -> Provenance:
    first = metrics[0].get("provenance", {}) if metrics else {}
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
    job: Job, task: dict[str, Any], classes: list[str], cache: Path
) -> DatasetContext:
    """The dataset's context; fingerprint and leaks from the (cached) inspection when readable."""
    from matseg.datasets.check import inspect_dataset
    from matseg.datasets.fingerprint import fingerprint
    from matseg.datasets.spec import spec_from_dict

    spec = job.spec
    finger: dict[str, Any] | None = None
    leaks: list[str] = []
    notes: list[str] = []
    splits: dict[str, int] = {}
    try:
        ins = inspect_dataset(spec_from_dict(spec, where=f"dataset {job.dataset}"), cache_dir=cache)
        finger = _nan_to_none(fingerprint(ins))
        splits = {name: len(items) for name, items in ins.split.splits.items()}
        leaks = [
            f"{'identical' if leak.exact else 'near-duplicate'} images across splits: "
            f"{leak.a} ({leak.split_a}) and {leak.b} ({leak.split_b}), pHash distance "
            f"{leak.distance}"
            for leak in ins.leaks
        ]
    except MatsegError as exc:  # the data moved since training: say so, keep the rest
        notes = [f"dataset not readable when the record was written: {exc.line()}"]
    return DatasetContext(
        name=job.dataset,
        modality=str(spec.get("modality", "other")),
        material=str(spec.get("material", "")),
        objective=task.get("objective", ""),
        difficulty=task.get("difficulty"),
        classes=classes,
        splits=splits,
        fingerprint=finger,
        leakage_warnings=leaks,
        notes=notes,
    )


def _curves(path: Path) -> list[CurvePoint]:
    if not path.is_file():
        return []
    rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))

    def num(v: str) -> float | None:
        try:
            x = float(v)
        except ValueError:
            return None
        return x if np.isfinite(x) else None

    return [
        CurvePoint(
            epoch=int(float(r["epoch"])),
            train_loss=num(r["train_loss"]),
            val_iou=num(r["val_iou"]),
            lr=num(r["lr"]),
            seconds=num(r["seconds"]),
        )
        for r in rows
    ]


def _split_evaluation(split: str, ev: dict[str, Any], folder: str) -> SplitEvaluation:
    s = ev["scores"]
    per = s.get("per_image", {})
    classes = s["classes"]
    images = []
    metas = ev.get("images", [])

    def column(name: str, missing: Any = None) -> list[Any]:
        return per.get(name) or [missing] * len(metas)

    for meta, macro, fg, acc, row in zip(
        metas, column("macro_iou"), column("foreground_iou"), column("pixel_accuracy"),
        column("iou", [None] * len(classes)), strict=True,
    ):  # fmt: skip
        images.append(
            ImageScore(
                key=meta["key"],
                source=meta.get("source", ""),
                mask=f"{folder}/{prediction_file(split, meta['key'])}",
                macro_iou=macro,
                foreground_iou=fg,
                pixel_accuracy=acc,
                iou_per_class=dict(zip(classes, row, strict=True)),
            )
        )
    baselines = {
        name: {
            k: b.get(k)
            for k in ("macro_iou", "foreground_iou", "pixel_accuracy", "macro_dice")
            if k in b
        }
        for name, b in ev.get("baselines", {}).items()
    }
    return SplitEvaluation(
        split=split,
        n_images=ev["n_images"],
        macro_iou=s.get("macro_iou"),
        foreground_iou=s.get("foreground_iou"),
        dice=s.get("macro_dice"),
        pixel_accuracy=s.get("pixel_accuracy"),
        weighted_iou=s.get("weighted_iou"),
        iou_per_class=s.get("iou_per_class", {}),
        ci=s.get("ci", {}),
        baselines=baselines,
        images=images,
    )


def _job_record(job: Job, result: dict[str, Any], curves: list[CurvePoint]) -> JobRecord:
    folder = f"jobs/{job.hash}"
    return JobRecord(
        hash=job.hash,
        label=job.label(),
        dataset=job.dataset,
        encoder=job.encoder,
        decoder=job.decoder,
        weights=job.weights,
        seed=job.seed,
        parameters=int(result["parameters"]),
        latency_ms_256=result.get("latency_ms_256"),
        train_seconds=result.get("train_seconds"),
        epochs=int(result.get("epochs", 0)),
        best_epoch=int(result.get("best_epoch", -1)),
        best_val_iou=result.get("best_val_iou"),
        stopped_by=str(result.get("stopped_by", "")),
        weights_loaded=_nan_to_none(result.get("weights", {})),
        curves=curves,
        evaluations={
            split: _split_evaluation(split, ev, folder)
            for split, ev in result.get("evaluations", {}).items()
        },
        folder=folder,
    )


def _quality(run: Path, datasets: dict[str, str]) -> list[QualityRecord]:
    out = []
    for qc_file in sorted((run / "qc").glob("*/qc.json")):
        data = _nan_to_none(read_json(qc_file, "a quality-control result (qc.json)", RecordError))
        job = qc_file.parent.name
        verdict = data["verdict"]
        flagged = []
        scores = qc_file.parent / "scores.csv"
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
        output_file = qc_file.parent / "output_qc.json"
        output = (
            _nan_to_none(read_json(output_file, "an output QC result", RecordError))
            if output_file.is_file()
            else None
        )
        figure = qc_file.parent / "output_qc.png"
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
                flagged_images=flagged,
                output_qc=output,
                figure=str(figure.relative_to(run)) if figure.is_file() else None,
            )
        )
    return out


def _explanations(run: Path, datasets: dict[str, str]) -> list[ExplanationRecord]:
    out = []
    for path in sorted((run / "explain").glob("*/*/explain.json")):
        data = _nan_to_none(read_json(path, "an explanation result (explain.json)", RecordError))
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
                heatmap=str((path.parent / "heatmap.npy").relative_to(run)),
                figure=str((path.parent / "explain.png").relative_to(run)),
            )
        )
    return out


def build_record(run: Path, sample_figures: bool = True) -> EvaluationRecord:
    """Gather a run folder's results into a validated record (nothing is recomputed)."""
    from matseg.execution.job import METRICS_FILE
    from matseg.execution.trained import read_plan
    from matseg.results import best_rows, job_rows

    run = Path(run)
    plan = read_plan(run)
    profile = read_json(run / "profile.json", "the run's profile.json", RecordError)
    finished = [
        (job, m)
        for job in plan.jobs
        if (m := read_job_metrics(run / "jobs" / job.hash / METRICS_FILE)) is not None
    ]
    if not finished:
        raise RecordError(str(run), "a run with at least one finished job", "none finished")
    jobs = []
    for job, result in finished:
        curves = _curves(run / "jobs" / job.hash / "curves.csv")
        jobs.append(_job_record(job, _nan_to_none(result), curves))
    task = profile.get("task", {})
    contexts, seen = [], set()
    for job, result in finished:
        if job.dataset not in seen:
            seen.add(job.dataset)
            contexts.append(
                _dataset_context(job, task, list(result["classes"]), run / "cache" / job.dataset)
            )
    by_job = {job.hash: job.dataset for job, _ in finished}
    quality, explanations = _quality(run, by_job), _explanations(run, by_job)
    figures: dict[str, str] = {}
    if sample_figures:
        from matseg.report.samples import write_sample_figure

        rows = [row for job, m in finished for row in job_rows(job, m)]
        for row in best_rows(rows):
            job = next(j for j, _ in finished if j.hash == row["job"])
            path = write_sample_figure(run, job)
            if path is not None:
                figures[job.hash] = str(path.relative_to(run))
    missing = []
    if len(finished) < len(plan.jobs):
        missing.append(f"{len(plan.jobs) - len(finished)} of {len(plan.jobs)} jobs not finished")
    if not quality:
        missing.append("no quality control (set qc.enabled or run `matseg qc fit`)")
    if not explanations:
        missing.append("no explanations (run `matseg explain`)")
    return EvaluationRecord(
        run=RunInfo(
            name=plan.profile_name, description=profile.get("description", ""), profile=profile
        ),
        provenance=_provenance(
            plan.profile_hash, [j for j, _ in finished], [m for _, m in finished]
        ),
        datasets=contexts,
        jobs=jobs,
        quality=quality,
        explanations=explanations,
        figures=figures,
        missing=missing,
    )


def write_record(run: Path, record: EvaluationRecord | None = None) -> Path:
    """Validate and write ``RUN/record.json`` atomically; return its path."""
    record = record if record is not None else build_record(run)
    data = record.model_dump(mode="json")
    EvaluationRecord.model_validate(data)  # what is written must read back
    return write_json(Path(run) / RECORD_FILE, data)


def read_record(path: Path) -> EvaluationRecord:
    """A record from ``record.json`` (or a run folder holding one), validated; errors one line."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_FILE
    data = read_json(
        path, "an evaluation record (record.json)", RecordError, "run `matseg report RUN`"
    )
    try:
        return EvaluationRecord.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        found = "nothing" if err["type"] == "missing" else repr(err.get("input"))[:60]
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise RecordError(
            f"{path}: {where}", err["msg"], found + more, "rebuild it with `matseg report RUN`"
        ) from None


def dump_schema(path: Path) -> Path:
    """Write the record's JSON Schema (for docs/)."""
    return write_bytes(path, (json.dumps(record_json_schema(), indent=2) + "\n").encode())
