"""A whole run: plan, inspect, execute, select, test, QC, explain, record, report.

``run(profile, out)`` is what ``matseg run`` and ``matseg demo`` call, and what a notebook calls.
Each dataset is inspected once, at the start (its fingerprint written before any training, as
nnU-Net writes its fingerprint before planning), and the prepared data is handed to the
executor, the fold ensembles, quality control and explanations, so no stage reads the data
again. The decision (:mod:`matseg.decision`) is made on out-of-fold (or validation) evidence
before the test split is scored by the fold ensembles; quality control and explanations then
work on the recommended combination's best fold model (by validation IoU). A finished job
(its metrics.json reads back) is never redone; a run killed at any moment resumes with
``resume=True`` and loses nothing that had finished.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matseg.api import Run
from matseg.atomic import write_json
from matseg.datasets.folds import fold_notes
from matseg.decision import (
    Halving,
    HalvingRung,
    Ranking,
    combination_name,
    decide,
    halving_drops,
    recommended_combinations,
)
from matseg.errors import SpecError
from matseg.execution.local import run_sequentially
from matseg.job import PreparedData, prepare_dataset, run_job
from matseg.plan import Job, Plan, compile_plan, rung_jobs
from matseg.profile import Profile, resolve_datasets
from matseg.results import JobResult, best_rows, ensemble_name, fold_groups, results_rows
from matseg.rundir import EXPLAIN_FILE, RunDir
from matseg.training import process_rank

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
Say = Callable[[str], None]


def _follow_rank_zero(plan: Plan, run: RunDir) -> list[str]:
    """A non-zero rank of a cluster-launched multi-device run: train each pending job in step
    with rank 0 (which decides, evaluates and writes everything) and write nothing."""
    prepared: dict[str, PreparedData] = {}
    trained = []
    for job in plan.jobs:
        if run.finished(job.hash):
            continue
        if job.dataset not in prepared:
            prepared[job.dataset] = prepare_dataset(job.spec, job.classes, None)
        run_job(job, prepared[job.dataset], run, progress_bar=False)
        trained.append(job.hash)
    return trained


def _successive_halving(
    profile: Profile,
    plan: Plan,
    folder: RunDir,
    execute: Callable[[list[Job]], tuple[list[str], list[str]]],
    say: Say,
) -> tuple[Plan, list[str], list[str]]:
    """Train rung by rung, dropping what the paired test shows worse (``evaluation.search =
    halving``); the executed plan (every rung's jobs), the trained and the reused hashes.

    Written here rather than with Ray Tune's ASHA or Optuna's pruners: both promote a top
    fraction by one scalar per trial, while a rung here is a set of fold jobs whose per-image
    out-of-fold scores are compared by paired tests with Holm's correction, and every job must
    stay a hashed, resumable unit of the run folder that any executor can run.
    """
    evaluation = profile.evaluation
    keep = {job.combination for job in plan.jobs}
    executed: list[Job] = []
    trained: list[str] = []
    reused: list[str] = []
    log = []
    for index in range(evaluation.rungs):
        jobs = rung_jobs(plan, evaluation, index, keep)
        executed += jobs
        folder.write_plan(plan.model_copy(update={"jobs": executed}))
        say(f"halving: rung {index + 1} of {evaluation.rungs}, {len(jobs)} jobs of "
            f"{jobs[0].training.max_epochs} epochs ({len(keep)} combinations)")  # fmt: skip
        done, found = execute(jobs)
        trained += done
        reused += found
        results = [r for job in jobs if (r := folder.read_result(job.hash)) is not None]
        last = index == evaluation.rungs - 1
        as_final = [r.model_copy(update={"job": r.job.model_copy(update={"rung": None})})
                    for r in results]  # fmt: skip
        ranking = Ranking.of_profile(profile.model_dump(mode="json"))
        decisions = decide(as_final, evaluation.tie_margin, ranking_by=ranking)
        dropped = {} if last else halving_drops(decisions)
        log.append(HalvingRung(
            index=index, epochs=jobs[0].training.max_epochs,
            combinations=sorted({combination_name(*j.combination[1:]) for j in jobs}),
            jobs=[j.hash for j in jobs], epochs_run=sum(r.epochs for r in results),
            dropped={name: why for (_, name), why in dropped.items()},
        ))  # fmt: skip
        for (dataset, name), why in dropped.items():
            say(f"halving: {dataset}: {name} dropped after rung {index + 1}: {why}")
        keep = {c for c in keep if (c[0], combination_name(*c[1:])) not in dropped}
    halving = Halving(
        rate=evaluation.halving_rate, rungs=log, epochs_run=sum(r.epochs_run for r in log)
    )
    write_json(folder.halving_file, halving.model_dump(mode="json"))
    return plan.model_copy(update={"jobs": executed}), trained, reused


def _draw_folds(plan: Plan, prepared: dict[str, PreparedData], say: Say) -> dict[str, list[str]]:
    """Draw each dataset's cross-validation folds before any training: a dataset too small for
    its folds stops the run here, and a class too rare to reach every fold is said (and kept,
    per dataset, for the record)."""
    notes: dict[str, list[str]] = {}
    for job in plan.jobs:
        if job.fold is None or job.dataset in notes:
            continue
        data = prepared[job.dataset]
        folds = data.folds(job.fold)
        items = data.development_items(job.fold.test)
        notes[job.dataset] = fold_notes(items, folds, data.presence())
        for note in notes[job.dataset]:
            say(f"{job.dataset}: {note}")
    return notes


def _deployed(
    results: list[JobResult], best: list[dict[str, Any]], chosen: dict[str, tuple[str, str, str]]
) -> dict[str, str]:
    """What quality control and explanations work on, per dataset (name -> dataset): the
    recommended combination's fold ensemble after cross-validation, else its best job."""
    groups = fold_groups(results)
    out = {}
    for row in best:
        members = groups.get((row["dataset"], *chosen.get(row["dataset"], ("", "", ""))))
        out[ensemble_name(members) if members else row["job"]] = row["dataset"]
    return out


def _explain_best(
    run: RunDir, profile: Profile, best: dict[str, str], prepared: dict[str, PreparedData],
    say: Say,
) -> None:  # fmt: skip
    """The profile's ``explain`` block: H of the first test images of each dataset's best job
    (an explanation already on disk is kept)."""
    from matseg.explain.run import ExplainOptions, explain_image
    from matseg.trained import load_trained

    settings = profile.explain
    options = ExplainOptions(
        kernel=settings.kernel, window=settings.window, stride=settings.stride,
        precision=settings.precision,
    )  # fmt: skip
    for job, dataset in best.items():
        trained = load_trained(run, job, prepared[dataset])
        test = trained.evaluations.get("test")
        sources = list(dict.fromkeys(i.source for i in test.images)) if test else []
        for source in sources[: settings.images]:
            image = Path(source)
            if (run.explain_dir(trained.name, image.stem) / EXPLAIN_FILE).is_file():
                continue
            say(f"explaining {image.name} with {trained.label}")
            explain_image(run, image, settings.roi, job, options, trained=trained)


def run(
    profile: Profile,
    out: Path | str = "runs",
    resume: bool = False,
    progress: Progress | None = None,
    progress_bar: bool = True,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    cpus_per_job: int = 1,
    say: Say | None = None,
) -> Run:
    """Run every job of the profile's plan, then select, quality-control, explain, record and
    report; finished jobs are read back, not retrained. Returns the :class:`~matseg.api.Run`.

    ``executor``: ``local`` (one job after another, or ``workers`` processes) or ``ray`` (one
    task per job on the cluster at ``address``). The run folder and its resume semantics are
    the same whichever runs the jobs. ``say`` receives one-line notes (stale locks, stages).
    """
    if executor not in ("local", "ray"):
        raise SpecError("--executor", "local or ray", repr(executor))
    if workers < 1:
        raise SpecError("--workers", "a count >= 1", str(workers))
    say = say or log.info
    specs = resolve_datasets(profile)
    plan = compile_plan(profile, specs)
    folder = RunDir.for_plan(Path(out), plan)
    if not folder.name.endswith(plan.profile_hash[:8]):
        say(f"{folder.root}: the same run, named by an earlier matseg; continuing it there")
    halving = profile.evaluation.search == "halving"
    if process_rank() != 0:
        if halving:
            raise SpecError("evaluation.search", "grid for a cluster-launched multi-device run",
                            "halving", "run halving with devices = 1 per job")  # fmt: skip
        return Run(folder, plan=plan, trained=_follow_rank_zero(plan, folder))
    if folder.jobs_dir.exists() and any(folder.jobs_dir.iterdir()) and not resume:
        raise SpecError(
            str(folder.root),
            "a new run folder",
            "one with jobs already in it",
            "add --resume to continue it (finished jobs are kept)",
        )
    with folder.lock(f"matseg run {profile.name}") as note:
        if note:
            say(note)
        folder.write_profile(profile)
        folder.write_plan(plan)
        prepared = {
            spec.name: prepare_dataset(spec, profile.task.classes, folder.cache_dir(spec.name))
            for spec in specs
        }
        notes = _draw_folds(plan, prepared, say)
        folder.write_fingerprints([
            data.facts().model_copy(update={"fold_notes": notes.get(name, [])})
            for name, data in prepared.items()
        ])  # fmt: skip

        def execute(jobs: list[Job]) -> tuple[list[str], list[str]]:
            """Train the unfinished ``jobs``: (trained, reused) hashes."""
            pending = [job for job in jobs if not folder.finished(job.hash)]
            reused = [job.hash for job in jobs if job not in pending]
            trained = _execute(
                pending, folder, prepared, executor, workers, address, cpus_per_job, progress,
                progress_bar, len(reused), len(jobs),
            )  # fmt: skip
            if progress is not None:
                progress("done", len(jobs), len(jobs))
            return trained, reused

        if halving:
            plan, trained, reused = _successive_halving(profile, plan, folder, execute, say)
        else:
            trained, reused = execute(plan.jobs)
        results = folder.results(plan)
        ranking = Ranking.of_profile(profile.model_dump(mode="json"))
        decisions = decide(results, profile.evaluation.tie_margin, ranking_by=ranking)
        if any(r.job.fold is not None for r in results):
            from matseg.ensemble import score_ensembles

            score_ensembles(folder, results, prepared, say)
        chosen = recommended_combinations(decisions)
        rows = results_rows(results, profile.task.target)
        folder.write_tables(rows, chosen)
        best = _deployed(results, best_rows(rows, chosen), chosen)
        if profile.qc.enabled:  # quality control of the best job per dataset (kept on --resume)
            from matseg.qc.pipeline import quality_control_for_run  # scikit-learn when asked

            quality_control_for_run(folder, best, prepared, progress=say)
        if profile.explain.enabled:
            _explain_best(folder, profile, best, prepared, say)
        from matseg.record import write_record
        from matseg.report import build_report

        write_record(folder)
        build_report(folder)
    return Run(folder, plan=plan, trained=trained, reused=reused)


def _execute(
    pending: list[Job], folder: RunDir, prepared: dict[str, PreparedData], executor: str,
    workers: int, address: str | None, cpus_per_job: int, progress: Progress | None,
    progress_bar: bool, done_before: int, total: int,
) -> list[str]:  # fmt: skip
    """The pending jobs on the chosen executor; the hashes it trained."""
    if executor == "ray":
        from matseg.execution.workers import run_on_ray

        return run_on_ray(pending, folder.root, address, cpus_per_job, progress=progress)
    if workers > 1:
        from matseg.execution.workers import run_in_processes

        return run_in_processes(pending, folder.root, workers, progress)
    return run_sequentially(pending, folder, prepared, progress, progress_bar, done_before, total)


def refresh_data_facts(run: RunDir) -> list[Path]:
    """Read a run's datasets again: rewrite ``fingerprint.json`` and redraw the sample figures
    of the finished jobs from their saved predictions (for folders written before these files
    existed, or data that changed). The files written."""
    from matseg.job import draw_samples

    plan = run.read_plan()
    results = run.results(plan)
    prepared: dict[str, PreparedData] = {}
    for job in plan.jobs:
        if job.dataset not in prepared:
            prepared[job.dataset] = prepare_dataset(
                job.spec, job.classes, run.cache_dir(job.dataset)
            )
    before = run.read_fingerprints()
    kept = {name: before[name].fold_notes for name in before}  # the folds were drawn at the start
    written = [
        run.write_fingerprints([
            p.facts().model_copy(update={"fold_notes": kept.get(name, [])})
            for name, p in prepared.items()
        ])
    ]  # fmt: skip
    for result in results:
        path = draw_samples(run, result, prepared[result.job.dataset])
        if path is not None:
            written.append(path)
    return written
