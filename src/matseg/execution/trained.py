"""A finished job of a run folder, loaded back: its plan entry, trained model and dataset.

Quality control, explanations and prediction all start here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from matseg.errors import SpecError, read_json
from matseg.execution.job import METRICS_FILE, PreparedData, prepare_dataset
from matseg.models import build_model, load_weights
from matseg.plan import Job, Plan


@dataclass
class TrainedJob:
    """A finished job with its weights loaded (eval mode) and its dataset prepared."""

    run: Path
    job: Job
    model: torch.nn.Module
    data: PreparedData


def read_plan(run: Path) -> Plan:
    """The run's plan.json (one-line error when ``run`` is not a run folder)."""
    data = read_json(
        run / "plan.json", "a run folder with plan.json", SpecError, "matseg run P.json"
    )
    return Plan.model_validate(data)


def choose_job(run: Path, job: str | None) -> Job:
    """The named job (a hash or its prefix), or the finished job with the best validation IoU."""
    plan = read_plan(run)
    finished = [j for j in plan.jobs if (run / "jobs" / j.hash / METRICS_FILE).exists()]
    if not finished:
        raise SpecError(str(run), "a run with at least one finished job", "none finished")
    if job is not None:
        matches = [j for j in finished if j.hash.startswith(job)]
        if len(matches) != 1:
            names = ", ".join(f"{j.hash} ({j.label()})" for j in finished)
            raise SpecError(
                f"--job {job}", f"one finished job of {run.name}", f"{len(matches)}: {names}"
            )
        return matches[0]

    def val_iou(j: Job) -> float:
        return float(json.loads((run / "jobs" / j.hash / METRICS_FILE).read_text())["best_val_iou"])

    return max(finished, key=val_iou)


def load_trained(run: Path, job: str | None = None) -> TrainedJob:
    """The job (a hash prefix, default the best by validation IoU) with its trained weights."""
    chosen = choose_job(run, job)
    data = prepare_dataset(chosen, run / "cache" / chosen.dataset)
    model, _ = build_model(chosen.encoder, chosen.decoder, data.in_channels, len(data.classes))
    load_weights(model, run / "jobs" / chosen.hash / "model.safetensors")
    return TrainedJob(run, chosen, model.eval(), data)
