"""Running a profile: a plan's jobs in a run folder that can resume, then record and report.

The jobs run one after another here, in N local processes, or as tasks on a Ray cluster
(:mod:`matseg.execution.workers`). Run folder (see DESIGN.md):
``runs/<profile-name>-<short-hash>/`` with ``profile.json``, ``plan.json``, ``results.csv``,
``best.csv``, ``record.json``, ``report.html`` and ``jobs/<job-hash>/``. A job whose
``metrics.json`` exists is finished and never redone; an unfinished one restarts from scratch,
which gives the same numbers because training is seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matseg.atomic import write_json
from matseg.errors import SpecError
from matseg.execution.job import METRICS_FILE, PreparedData, prepare_dataset, run_job
from matseg.plan import Plan, compile_plan
from matseg.profile import Profile, resolve_datasets
from matseg.results import best_rows, read_job_metrics, write_results
from matseg.training import process_rank

Progress = Callable[[str, int, int], None]


@dataclass
class RunSummary:
    """Where the run is and what it did."""

    folder: Path
    plan: Plan
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)  # qc of best jobs, when enabled
    report: Path | None = None  # report.html, built from record.json


def run_folder(profile: Profile, plan: Plan, out: Path) -> Path:
    """``<out>/<profile-name>-<first 8 of the profile hash>``."""
    return out / f"{profile.name}-{plan.profile_hash[:8]}"


def _follow_rank_zero(plan: Plan, folder: Path) -> RunSummary:
    """A non-zero rank of a cluster-launched multi-device run: train each pending job in step
    with rank 0 (which decides, evaluates and writes everything) and write nothing."""
    summary = RunSummary(folder, plan)
    jobs_dir = folder / "jobs"
    prepared: dict[str, PreparedData] = {}
    for job in plan.jobs:
        if (jobs_dir / job.hash / METRICS_FILE).exists():
            continue
        if job.dataset not in prepared:
            prepared[job.dataset] = prepare_dataset(job, None)
        run_job(job, prepared[job.dataset], jobs_dir / job.hash, progress_bar=False)
        summary.trained.append(job.hash)
    return summary


def run_profile(
    profile: Profile,
    out: Path,
    resume: bool = False,
    progress: Progress | None = None,
    progress_bar: bool = True,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    cpus_per_job: int = 1,
) -> RunSummary:
    """Run every job of the profile's plan; finished jobs are read back, not retrained.

    ``executor``: ``local`` (one job after another, or ``workers`` processes) or ``ray`` (one
    task per job on the cluster at ``address``). The run folder and its resume semantics are
    the same whichever runs the jobs.
    """
    if executor not in ("local", "ray"):
        raise SpecError("--executor", "local or ray", repr(executor))
    if workers < 1:
        raise SpecError("--workers", "a count >= 1", str(workers))
    specs = resolve_datasets(profile)
    plan = compile_plan(profile, specs)
    folder = run_folder(profile, plan, out)
    jobs_dir = folder / "jobs"
    if process_rank() != 0:
        return _follow_rank_zero(plan, folder)
    if jobs_dir.exists() and any(jobs_dir.iterdir()) and not resume:
        raise SpecError(
            str(folder),
            "a new run folder",
            "one with jobs already in it",
            "add --resume to continue it (finished jobs are kept)",
        )
    write_json(folder / "profile.json", profile.model_dump(mode="json", by_alias=True))
    write_json(folder / "plan.json", plan.model_dump(mode="json"))
    summary = RunSummary(folder, plan)
    pending = [job for job in plan.jobs if not (jobs_dir / job.hash / METRICS_FILE).exists()]
    summary.skipped = [job.hash for job in plan.jobs if job not in pending]
    if executor == "ray":
        from matseg.execution.workers import run_on_ray

        summary.trained = run_on_ray(pending, folder, address, cpus_per_job, progress=progress)
    elif workers > 1:
        from matseg.execution.workers import run_in_processes

        summary.trained = run_in_processes(pending, folder, workers, progress)
    else:
        prepared: dict[str, PreparedData] = {}
        for n, job in enumerate(pending):
            if progress is not None:
                progress(job.label(), len(summary.skipped) + n, len(plan.jobs))
            if job.dataset not in prepared:
                prepared[job.dataset] = prepare_dataset(job, folder / "cache" / job.dataset)
            run_job(job, prepared[job.dataset], jobs_dir / job.hash, progress_bar=progress_bar)
            summary.trained.append(job.hash)
    if progress is not None:
        progress("done", len(plan.jobs), len(plan.jobs))
    metrics_by_job = {
        job.hash: read_job_metrics(jobs_dir / job.hash / METRICS_FILE) for job in plan.jobs
    }
    summary.rows = write_results(folder, plan.jobs, metrics_by_job)
    if profile.qc.enabled:  # quality control of the best job per dataset (kept on --resume)
        from matseg.qc.pipeline import quality_control_for_run  # scikit-learn only when asked

        best = list(dict.fromkeys(row["job"] for row in best_rows(summary.rows)))
        summary.quality = quality_control_for_run(folder, best)
    from matseg.record import write_record  # the record and report close every run
    from matseg.report import build_report

    write_record(folder)
    summary.report = build_report(folder).html
    return summary
