"""The sequential executor: a plan's pending jobs one after another in this process.

The datasets come prepared by the pipeline (inspected once per run), so a job here costs its
training and evaluation only. :mod:`matseg.execution.workers` runs the same jobs in local
processes or on a Ray cluster, with the same files and numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from matseg.job import PreparedData, run_job
from matseg.plan import Job
from matseg.rundir import RunDir

Progress = Callable[[str, int, int], None]


def run_sequentially(
    jobs: list[Job],
    run: RunDir,
    prepared: Mapping[str, PreparedData],
    progress: Progress | None = None,
    progress_bar: bool = True,
    already_done: int = 0,
    total: int | None = None,
) -> list[str]:
    """Train and evaluate each job (its dataset taken from ``prepared`` by name); the hashes."""
    done: list[str] = []
    total = total if total is not None else len(jobs)
    for n, job in enumerate(jobs):
        if progress is not None:
            progress(job.label(), already_done + n, total)
        run_job(job, prepared[job.dataset], run, progress_bar=progress_bar)
        done.append(job.hash)
    return done
