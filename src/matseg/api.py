"""An existing run, opened in a notebook: results, jobs, the best job, models, QC, the record.

    run = matseg.Run.open("runs/demo-1234abcd")
    run.results                   # Table 3 as rows (run.results.to_pandas() with pandas)
    best = run.best("synthetic-pores")
    model = best.model()          # the trained network, eval mode (no data read)
    run.qc(best)                  # its quality control: verdict, thresholds, scenarios
    run.record, run.report_path

Everything the CLI prints about a run comes from here; the run folder stays the one source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matseg.errors import SpecError
from matseg.plan import Job, Plan
from matseg.results import JobResult, best_rows, results_rows
from matseg.rundir import OUTPUT_QC_FILE, QC_FILE, RunDir

if TYPE_CHECKING:
    import torch

    from matseg.decision import DatasetDecision
    from matseg.qc.quality import TypicalityQC
    from matseg.record import EvaluationRecord
    from matseg.trained import TrainedJob


class Rows(list[dict[str, Any]]):
    """A results table as a list of row dicts (no pandas needed); ``to_pandas()`` when it is
    installed."""

    def to_pandas(self) -> Any:
        try:
            import pandas as pd
        except ImportError as exc:
            raise SpecError("Rows.to_pandas", "pandas installed", "no pandas module",
                            "pip install pandas, or use the rows as they are") from exc  # fmt: skip
        return pd.DataFrame(list(self))


@dataclass(frozen=True)
class FinishedJob:
    """One finished job of a run: its plan entry, what it wrote, and its model on demand."""

    run: RunDir
    result: JobResult

    @property
    def job(self) -> Job:
        return self.result.job

    @property
    def hash(self) -> str:
        return self.result.job.hash

    @property
    def label(self) -> str:
        return self.result.job.label()

    @property
    def folder(self) -> Path:
        return self.run.job_dir(self.hash)

    def model(self) -> torch.nn.Module:
        """The trained network in eval mode (its weights file; the dataset is not read)."""
        from matseg.trained import load_model

        return load_model(self.run, self.result)

    def trained(self) -> TrainedJob:
        """Model and prepared dataset together (what QC, explanations and prediction use)."""
        from matseg.trained import load_trained

        return load_trained(self.run, self.hash)

    def curves(self) -> list[dict[str, float | None]]:
        return self.run.read_curves(self.hash)

    def __repr__(self) -> str:
        test = self.result.evaluations.get("test")
        iou = f", test IoU {test.scores.macro_iou:.3f}" if test and test.scores.macro_iou else ""
        return f"FinishedJob({self.hash}: {self.label}, val IoU {self.result.best_val_iou}{iou})"


@dataclass(frozen=True)
class QualityReport:
    """A job's quality control as the run wrote it (``qc.json`` and ``output_qc.json``)."""

    job: FinishedJob
    input: dict[str, Any]
    output: dict[str, Any] | None
    folder: Path

    @property
    def ready(self) -> bool:
        return bool(self.input["verdict"]["ready"])

    @property
    def verdict(self) -> dict[str, Any]:
        return dict(self.input["verdict"])

    def estimator(self) -> TypicalityQC:
        """The fitted estimator (refitted from the saved embeddings, exactly), to score new
        images: ``run.qc(job).estimator().verdicts(images)``."""
        from matseg.qc.workflow import load_fitted, load_job

        return load_fitted(load_job(self.job.run, self.job.hash)).qc


@dataclass
class Run:
    """A run folder, opened: typed access to what the run wrote. ``trained`` and ``reused``
    name the jobs this session trained and found finished (empty for :meth:`open`)."""

    folder: RunDir
    plan: Plan | None = None
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.folder, RunDir):
            self.folder = RunDir(Path(self.folder))
        if self.plan is None:
            self.plan = RunDir.existing(self.folder.root).read_plan()

    @classmethod
    def open(cls, folder: Path | str) -> Run:
        """An existing run folder (one-line error when it is not one)."""
        return cls(RunDir.existing(folder))

    @property
    def path(self) -> Path:
        return self.folder.root

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def datasets(self) -> list[str]:
        assert self.plan is not None
        return list(dict.fromkeys(j.dataset for j in self.plan.jobs))

    @property
    def jobs(self) -> list[FinishedJob]:
        """The finished jobs, in plan order."""
        return [FinishedJob(self.folder, r) for r in self.folder.results(self.plan)]

    @property
    def results(self) -> Rows:
        """Table 3: one row per finished job and evaluated split (as results.csv)."""
        return Rows(results_rows([j.result for j in self.jobs], self._target()))

    def _target(self) -> str | None:
        """The task's target quantity, as the run's profile names it."""
        return (self.folder.read_profile_data().get("task") or {}).get("target")

    def decisions(self) -> list[DatasetDecision]:
        """Per dataset: the ranking on out-of-fold (or validation) evidence, the paired tests,
        the verdict and the recommended combination (:mod:`matseg.decision`)."""
        return self._decisions(self.jobs)

    def _decisions(self, jobs: Sequence[FinishedJob]) -> list[DatasetDecision]:
        from matseg.decision import decide_run

        return decide_run(self.folder, [j.result for j in jobs])

    def best_results(self) -> Rows:
        """Table 2: per dataset, the recommended combination's job with the best validation
        IoU (its test row; its out-of-fold row under cross-validation)."""
        from matseg.decision import recommended_combinations

        jobs = self.jobs
        rows = results_rows([j.result for j in jobs], self._target())
        return Rows(best_rows(rows, recommended_combinations(self._decisions(jobs))))

    def job(self, prefix: str) -> FinishedJob:
        """The finished job whose hash starts with ``prefix``."""
        jobs = self.jobs
        matches = [j for j in jobs if j.hash.startswith(prefix)]
        if len(matches) != 1:
            names = ", ".join(f"{j.hash} ({j.label})" for j in jobs)
            raise SpecError(f"job {prefix}", f"one finished job of {self.name}",
                            f"{len(matches)}: {names}")  # fmt: skip
        return matches[0]

    def best(self, dataset: str | None = None) -> FinishedJob:
        """The recommended combination's finished job with the best VALIDATION IoU (of
        ``dataset``; the test split never chooses; any job when nothing is recommended).
        Without ``dataset`` the run must have one dataset."""
        jobs = self.jobs
        if dataset is None:
            names = sorted({j.job.dataset for j in jobs})
            if len(names) > 1:
                raise SpecError(f"run {self.name}", "best(dataset) with one of its datasets",
                                f"{len(names)} datasets: {', '.join(names)}")  # fmt: skip
        chosen = [j for j in jobs if dataset is None or j.job.dataset == dataset]
        if not chosen:
            raise SpecError(f"run {self.name}", f"a finished job of dataset {dataset!r}",
                            f"datasets {', '.join(self.datasets)}")  # fmt: skip
        from matseg.decision import recommended_combinations

        picks = recommended_combinations(self._decisions(jobs))
        recommended = [j for j in chosen if j.job.combination[1:] == picks.get(j.job.dataset)]
        chosen = recommended or chosen

        def val(j: FinishedJob) -> float:
            return -1.0 if j.result.best_val_iou is None else j.result.best_val_iou

        return max(chosen, key=val)

    def qc(self, job: FinishedJob | str | None = None) -> QualityReport | None:
        """The quality control of a job (default: the best, for a run of one dataset); None
        when it has none (``matseg qc fit``, or ``qc.enabled`` in the profile)."""
        chosen = job if isinstance(job, FinishedJob) else (
            self.job(job) if job is not None else self.best()
        )  # fmt: skip
        path = self.folder.qc_file(chosen.hash, QC_FILE)
        if not path.is_file():
            return None
        from matseg.errors import read_json

        out = self.folder.qc_file(chosen.hash, OUTPUT_QC_FILE)
        return QualityReport(
            chosen,
            read_json(path, "a quality-control result (qc.json)"),
            read_json(out, "an output QC result") if out.is_file() else None,
            self.folder.qc_dir(chosen.hash),
        )

    def quality(self, jobs: Sequence[FinishedJob] | None = None) -> list[QualityReport]:
        """The quality controls the run has (of ``jobs``, default every job with one)."""
        chosen = jobs if jobs is not None else self.jobs
        return [q for j in chosen if (q := self.qc(j)) is not None]

    @property
    def record(self) -> EvaluationRecord:
        """The evaluation record (``record.json``), validated."""
        from matseg.record import read_record

        return read_record(self.folder.record_file)

    @property
    def report_path(self) -> Path:
        return self.folder.report_file

    def __repr__(self) -> str:
        assert self.plan is not None
        done = len(self.folder.results(self.plan))
        return f"Run({self.path}: {done} of {len(self.plan.jobs)} jobs finished)"
