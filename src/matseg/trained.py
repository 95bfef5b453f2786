"""A finished job of a run folder, loaded back: its result, trained model and dataset.

Quality control, explanations, prediction and export all start here; none of them needs to
know how jobs were run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from matseg.decision import decide_run, recommended_combinations
from matseg.errors import SpecError
from matseg.job import PreparedData, prepare_for_job
from matseg.models import load_trained_model
from matseg.plan import Job
from matseg.results import JobResult
from matseg.rundir import RunDir


@dataclass
class TrainedJob:
    """A finished job with its weights loaded (eval mode) and its dataset prepared."""

    run: RunDir
    job: Job
    result: JobResult
    model: torch.nn.Module
    data: PreparedData


def finished_results(run: RunDir) -> list[JobResult]:
    """The run's finished jobs (plan order); an error when none has finished."""
    results = run.results()
    if not results:
        raise SpecError(str(run.root), "a run with at least one finished job", "none finished")
    return results


def choose_result(run: RunDir, job: str | None = None) -> JobResult:
    """The named job (a hash or its prefix), or the recommended combination's finished job with
    the best validation IoU (of a run of one dataset; any dataset's otherwise)."""
    finished = finished_results(run)
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


def load_model(run: RunDir, result: JobResult) -> torch.nn.Module:
    """The job's trained model (eval mode), without reading its dataset."""
    job = result.job
    return load_trained_model(
        job.encoder, job.decoder, len(result.classes), run.weights_file(job.hash),
        result.in_channels,
    )  # fmt: skip


def load_trained(
    run: RunDir | Path, job: str | None = None, data: PreparedData | None = None
) -> TrainedJob:
    """The job (a hash prefix, default the best by validation IoU) with its trained weights and
    its dataset (``data`` when the caller has it prepared already: no second inspection)."""
    run = run if isinstance(run, RunDir) else RunDir.existing(run)
    result = choose_result(run, job)
    data = data if data is not None else prepare_for_job(result.job, run)
    model = load_trained_model(
        result.job.encoder, result.job.decoder, len(result.classes),
        run.weights_file(result.job.hash), result.in_channels or data.in_channels,
    )  # fmt: skip
    return TrainedJob(run, result.job, result, model, data)
