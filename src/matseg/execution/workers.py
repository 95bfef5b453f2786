"""Running jobs outside the calling process: N local processes, or tasks on a Ray cluster.

Both executors run :func:`run_job_in_worker`, which trains one job into the run folder exactly as
the sequential loop does (same seed, same files, ``metrics.json`` last), so a job's numbers do
not depend on where it ran, and ``--resume`` works the same after any of them. The run folder
must be visible to every worker (one machine, or a shared filesystem on a cluster).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matseg.atomic import write_bytes
from matseg.errors import SpecError
from matseg.plan import Job

if TYPE_CHECKING:
    from matseg.job import PreparedData

Progress = Callable[[str, int, int], None]


@functools.lru_cache(maxsize=4)
def _prepared(spec_json: str, classes: tuple[str, ...] | None, cache_dir: str) -> PreparedData:
    """A dataset inspected once per worker process, reused by every job it runs on it."""
    from matseg.datasets.spec import spec_from_dict
    from matseg.job import prepare_dataset

    spec = spec_from_dict(json.loads(spec_json))
    return prepare_dataset(spec, list(classes) if classes else None, Path(cache_dir))


def run_job_in_worker(job_data: dict[str, Any], folder: str, threads: int | None) -> str:
    """Train and evaluate one job in this (worker) process; return its hash."""
    import torch

    from matseg.job import run_job
    from matseg.rundir import RunDir

    if threads:
        torch.set_num_threads(threads)
    job = Job.model_validate(job_data)
    run = RunDir(Path(folder))
    write_bytes(run.worker_pid_file(job.hash), str(os.getpid()).encode())
    data = _prepared(
        job.spec.model_dump_json(),
        tuple(job.classes) if job.classes else None,
        str(run.cache_dir(job.dataset)),
    )
    run_job(job, data, run, progress_bar=False)
    return job.hash


def run_in_processes(
    jobs: list[Job], folder: Path, workers: int, progress: Progress | None = None
) -> list[str]:
    """``workers`` local processes (spawned), each with its share of the CPU threads."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    done: list[str] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(run_job_in_worker, job.model_dump(mode="json"), str(folder), threads): job
            for job in jobs
        }
        for future in as_completed(futures):
            done.append(future.result())
            if progress is not None:
                progress(futures[future].label(), len(done), len(jobs))
    return done


def run_on_ray(
    jobs: list[Job],
    folder: Path,
    address: str | None = None,
    cpus_per_job: int = 1,
    retries: int = 3,
    progress: Progress | None = None,
) -> list[str]:
    """One Ray task per job (``training.devices`` GPUs each when the cluster has GPUs, else
    ``cpus_per_job`` CPUs per device); a task whose worker dies is retried up to ``retries``
    times."""
    try:
        import ray
    except ImportError as exc:
        raise SpecError("--executor ray", "Ray installed", "no ray module",
                        'pip install "matseg[ray]"') from exc  # fmt: skip
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)  # fmt: skip
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        remote = ray.remote(run_job_in_worker)

        def submit(job: Job) -> Any:
            # a multi-device job (training.devices) asks for that many GPUs, or CPU shares
            devices = job.training.devices
            return remote.options(
                num_cpus=cpus_per_job * (1 if gpus else devices),
                num_gpus=devices if gpus else 0, max_retries=retries, retry_exceptions=False,
            ).remote(job.model_dump(mode="json"), str(folder.resolve()), cpus_per_job)  # fmt: skip

        refs = {submit(job): job for job in jobs}
        done: list[str] = []
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done.append(ray.get(ready[0]))
            if progress is not None:
                progress(refs[ready[0]].label(), len(done), len(jobs))
        return done
    finally:
        if started_here:
            ray.shutdown()
