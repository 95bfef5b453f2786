"""A finished job of a run folder, loaded back: its result, trained model and dataset.

Quality control, explanations, prediction and export all start here; none of them needs to
know how jobs were run. After cross-validation the default is the recommended combination's
fold ensemble (:class:`matseg.models.FoldEnsemble`, the mean probability of its fold models),
named ``ensemble-<hash>`` wherever a job hash is accepted; a job hash picks one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from matseg.decision import decide_run, recommended_combinations
from matseg.errors import ModelError, SpecError
from matseg.job import PreparedData, prepare_for_job
from matseg.models import FoldEnsemble, load_trained_model
from matseg.plan import Job
from matseg.results import (
    ENSEMBLE,
    JobResult,
    SplitResult,
    ensemble_hash,
    ensemble_name,
    fold_groups,
)
from matseg.rundir import RunDir


@dataclass
class TrainedJob:
    """A finished job (or a fold ensemble) with its weights loaded (eval mode) and its dataset
    prepared. For an ensemble, ``job`` and ``result`` are its member with the best validation
    IoU (whose settings and classes every member shares) and ``members`` lists them all."""

    run: RunDir
    job: Job
    result: JobResult
    model: torch.nn.Module
    data: PreparedData
    members: list[JobResult] = field(default_factory=list)

    @property
    def name(self) -> str:
        """What names its quality control, explanations and predictions: the job's hash, or
        ``ensemble-<hash>`` for a fold ensemble."""
        return ensemble_name(self.members) if self.members else self.job.hash

    @property
    def label(self) -> str:
        if not self.members:
            return self.job.label()
        j = self.job
        return f"{j.dataset} / {j.encoder} + {j.decoder} / fold ensemble of {len(self.members)}"

    @property
    def feature_model(self) -> torch.nn.Module:
        """The network whose encoder quality control reads: the model itself, or for an
        ensemble its best member (fold encoders embed images in different spaces)."""
        if not self.members:
            return self.model
        index = [r.job.hash for r in self.members].index(self.job.hash)
        return self.model.members[index]  # type: ignore[index,union-attr]

    @property
    def evaluations(self) -> dict[str, SplitResult]:
        """Its ONE evaluation per split: the job's, or the fold ensemble's (test and shift
        sets, scored at the end of the run; {} before that)."""
        if not self.members:
            return self.result.evaluations
        scored = self.run.read_ensemble(ensemble_hash(self.members))
        return scored.evaluations if scored is not None else {}

    def prediction(self, split: str, key: str) -> np.ndarray:
        """The saved predicted mask of one image of a split (the ensemble's, for an ensemble)."""
        if not self.members:
            return self.run.read_prediction(self.job.hash, split, key)
        return self.run.read_ensemble_prediction(ensemble_hash(self.members), split, key)


def finished_results(run: RunDir) -> list[JobResult]:
    """The run's finished jobs (plan order); an error when none has finished."""
    results = run.results()
    if not results:
        raise SpecError(str(run.root), "a run with at least one finished job", "none finished")
    return results


def choose_result(
    run: RunDir, job: str | None = None, finished: list[JobResult] | None = None
) -> JobResult:
    """The named job (a hash or its prefix), or the recommended combination's finished job with
    the best validation IoU (of a run of one dataset; any dataset's otherwise). ``finished``:
    the run's finished results when the caller has read them already."""
    finished = finished if finished is not None else finished_results(run)
    if job is not None:
        matches = [r for r in finished if r.job.hash.startswith(job)]
        if len(matches) != 1:
            names = ", ".join(f"{r.job.hash} ({r.job.label()})" for r in finished)
            raise SpecError(
                f"--job {job}", f"one finished job of {run.name}", f"{len(matches)}: {names}"
            )
        return matches[0]
    picks = recommended_combinations(decide_run(run, finished))
    recommended = [r for r in finished if r.job.combination[1:] == picks.get(r.job.dataset)]
    return max(
        recommended or finished, key=lambda r: -1.0 if r.best_val_iou is None else r.best_val_iou
    )


def load_model(run: RunDir, result: JobResult, in_channels: int | None = None) -> torch.nn.Module:
    """The job's trained model (eval mode), without reading its dataset. A missing or damaged
    weights file says how to train the job again."""
    job = result.job
    try:
        return load_trained_model(
            job.encoder, job.decoder, len(result.classes), run.weights_file(job.hash),
            result.in_channels or in_channels,
        )  # fmt: skip
    except ModelError as exc:
        raise ModelError(
            exc.where,
            "the trained model of a finished job",
            exc.found,
            f"delete {run.metrics_file(job.hash)} and run `matseg run PROFILE --resume`: "
            "it trains this job again",
        ) from None


def fold_members(run: RunDir, name: str | None = None) -> list[JobResult]:
    """A fold ensemble's members: the one named ``name`` (``ensemble-<hash prefix>``), or by
    default the recommended combination's (of the dataset :func:`choose_result` picks); []
    when the run has no cross-validation jobs."""
    finished = finished_results(run)
    groups = fold_groups(finished)
    if name is not None:
        wanted = name.removeprefix(ENSEMBLE)
        matches = [m for m in groups.values() if ensemble_hash(m).startswith(wanted)]
        if len(matches) != 1:
            names = ", ".join(f"{ensemble_name(m)} ({' + '.join(c[1:3])})"
                              for c, m in groups.items())  # fmt: skip
            raise SpecError(f"--job {name}", f"one fold ensemble of {run.name}",
                            f"{len(matches)}: {names or 'no cross-validation jobs'}")  # fmt: skip
        return matches[0]
    if not groups:
        return []
    best = choose_result(run, finished=finished)
    return groups.get(best.job.combination, [])


def load_trained(
    run: RunDir | Path, job: str | None = None, data: PreparedData | None = None
) -> TrainedJob:
    """The job (a hash prefix) or fold ensemble (``ensemble-<hash>``) with its trained weights
    and its dataset (``data`` when the caller has it prepared already: no second inspection).
    Default: the recommended combination's fold ensemble after cross-validation, else its job
    with the best validation IoU."""
    run = run if isinstance(run, RunDir) else RunDir.existing(run)
    members = fold_members(run, job) if job is None or job.startswith(ENSEMBLE) else []
    if members:
        result = max(members, key=lambda r: -1.0 if r.best_val_iou is None else r.best_val_iou)
        data = data if data is not None else prepare_for_job(result.job, run)
        model = FoldEnsemble([load_model(run, r) for r in members]).eval()
        return TrainedJob(run, result.job, result, model, data, list(members))
    result = choose_result(run, job)
    data = data if data is not None else prepare_for_job(result.job, run)
    model = load_model(run, result, data.in_channels)
    return TrainedJob(run, result.job, result, model, data)
