"""The run folder: one object owns every path and file format of a run.

Layout (see DESIGN.md)::

    runs/<profile-name>-<short-hash>/
      profile.json  plan.json  fingerprint.json  results.csv  best.csv  record.json
      report.html  report.md  tables/  figures/  .lock
      jobs/<job-hash>/  model.safetensors  metrics.json  curves.csv  predictions/  log.txt
      cache/<dataset>/  qc/<job-hash>/  explain/<job-hash>/<image>/

The short hash names the run by its jobs' hashes and the settings of the stages whose outputs
the folder keeps (``qc``, ``explain``, each without its defaults), so a profile's description,
its dataset paths, its decision settings or a field that a later matseg adds at its default never
start a new folder; a folder an earlier matseg named otherwise is found by its content.

Every stage reads and writes a run through :class:`RunDir`; no other module joins path strings
for run files. Writes are atomic (:mod:`matseg.atomic`). ``metrics.json`` is a job's last file,
so a job whose metrics read back is finished; a damaged one counts as unfinished (``--resume``
retrains it) and reading it is a one-line error naming the file and the remedy.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from matseg.atomic import write_bytes, write_csv, write_json
from matseg.errors import MatsegError, SpecError, not_a_file
from matseg.fields import first_problem
from matseg.plan import Plan, run_hash
from matseg.profile import Profile, QualityControl
from matseg.results import COLUMNS, EnsembleResult, JobResult, best_rows

CURVE_FIELDS = ["epoch", "train_loss", "val_iou", "lr", "seconds"]


class RunFolderError(MatsegError):
    """A run folder, or one of its files, is missing or damaged."""


class RunLockedError(MatsegError):
    """Another process is writing this run folder."""


class DatasetFacts(BaseModel):
    """What the run learnt about one dataset when it inspected it (once, at the start): the
    fingerprint and everything later stages need, so they never inspect the data again."""

    model_config = ConfigDict(extra="allow")

    name: str
    classes: list[str]
    in_channels: int
    train_class_frequencies: list[float]
    splits: dict[str, int] = Field(description="images per split")
    fingerprint: dict[str, Any]
    leakage_warnings: list[str] = Field(default_factory=list)
    fold_notes: list[str] = Field(
        default_factory=list, description="classes too rare to reach every fold's held-out part"
    )


def _inside(base: Path, name: str, what: str) -> Path:
    """``base / name``, refused when ``name`` would lead outside ``base`` (``..``, absolute)."""
    path = (base / name).resolve()
    if not path.is_relative_to(base.resolve()) or path == base.resolve():
        raise SpecError(what, f"a plain name that stays inside {base}", repr(name))
    return base / name


def _json(path: Path, what: str) -> Any:
    """A JSON file of the run; missing or damaged is one line with the path."""
    if not path.is_file():
        raise RunFolderError(str(path), what, not_a_file(path), "is this a run folder?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(
            str(path), f"{what} (valid JSON)", f"a damaged file ({exc})", _REMEDY
        ) from None


# The files of a job's quality control (``qc/<job>/``) and of one explanation
# (``explain/<job>/<image>/``): named here only, whichever stage writes or reads them.
QC_FILE = "qc.json"
EMBEDDINGS_FILE = "embeddings.npz"
SCORES_FILE = "scores.csv"
NEW_SCORES_FILE = "new_scores.csv"
OUTPUT_QC_FILE = "output_qc.json"
OUTPUT_QC_FIGURE = "output_qc.png"
EXPLAIN_FILE = "explain.json"
HEATMAP_FILE = "heatmap.npy"
EXPLAIN_FIGURE = "explain.png"

_REMEDY = "run `matseg run PROFILE --resume` to rebuild it"


@dataclass(frozen=True)
class RunDir:
    """A run folder on disk: the paths of its files and typed reading and writing of each."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def for_plan(cls, out: Path, plan: Plan) -> RunDir:
        """``<out>/<profile-name>-<first 8 of the profile hash>``, or the folder of the same run
        that an earlier matseg named otherwise (its profile and jobs hash to this plan's)."""
        named = cls(Path(out) / f"{plan.profile_name}-{plan.profile_hash[:8]}")
        if named.root.exists() or not Path(out).is_dir():
            return named
        for candidate in sorted(Path(out).glob(f"{plan.profile_name}-*")):
            if cls(candidate).holds_run(plan):
                return cls(candidate)
        return named

    def holds_run(self, plan: Plan) -> bool:
        """Whether this folder's profile and (final) jobs are ``plan``'s run."""
        try:
            jobs = [j.hash for j in self.read_plan().jobs if j.final]
            return run_hash(self.read_profile_data(), jobs) == plan.profile_hash
        except (MatsegError, ValidationError, OSError):
            return False  # unreadable or of another kind: not this run

    @classmethod
    def existing(cls, folder: Path | str) -> RunDir:
        """A run folder that must already hold ``plan.json`` (one-line error otherwise)."""
        run = cls(Path(folder))
        if not run.plan_file.is_file():
            raise SpecError(
                str(run.root), "a run folder with plan.json", "none", "matseg run PROFILE.json"
            )
        return run

    @property
    def name(self) -> str:
        return self.root.name

    # --- top-level files -------------------------------------------------------------------------

    @property
    def profile_file(self) -> Path:
        return self.root / "profile.json"

    @property
    def plan_file(self) -> Path:
        return self.root / "plan.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def results_file(self) -> Path:
        return self.root / "results.csv"

    @property
    def best_file(self) -> Path:
        return self.root / "best.csv"

    @property
    def record_file(self) -> Path:
        return self.root / "record.json"

    @property
    def report_file(self) -> Path:
        return self.root / "report.html"

    @property
    def report_markdown(self) -> Path:
        return self.root / "report.md"

    def table_file(self, name: str) -> Path:
        return self.root / "tables" / f"{name}.csv"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def relative(self, path: Path) -> str:
        """A path inside the run, relative to its root (what the record stores)."""
        return Path(path).relative_to(self.root).as_posix()

    # --- jobs ------------------------------------------------------------------------------------

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def job_dir(self, job: str) -> Path:
        return _inside(self.jobs_dir, job, "job hash")

    def metrics_file(self, job: str) -> Path:
        return self.job_dir(job) / "metrics.json"

    def weights_file(self, job: str) -> Path:
        return self.job_dir(job) / "model.safetensors"

    def curves_file(self, job: str) -> Path:
        return self.job_dir(job) / "curves.csv"

    def job_log(self, job: str) -> Path:
        return self.job_dir(job) / "log.txt"

    def worker_pid_file(self, job: str) -> Path:
        """Which process is training a job (for operators, and the kill test)."""
        return self.job_dir(job) / "worker.pid"

    def prediction_file(self, job: str, split: str, key: str) -> Path:
        """The predicted class-id PNG of one image of a split."""
        return self.job_dir(job) / "predictions" / split / f"{key.replace('/', '__')}.png"

    # --- fold ensembles (cross-validation) ------------------------------------------------------

    @property
    def halving_file(self) -> Path:
        """The rungs of a successive-halving search (``evaluation.search = halving``)."""
        return self.root / "halving.json"

    @property
    def ensembles_dir(self) -> Path:
        return self.root / "ensembles"

    def ensemble_dir(self, ensemble: str) -> Path:
        return _inside(self.ensembles_dir, ensemble, "ensemble hash")

    def ensemble_prediction_file(self, ensemble: str, split: str, key: str) -> Path:
        """An ensemble's predicted class-id PNG of one image (same layout as a job's)."""
        return self.ensemble_dir(ensemble) / "predictions" / split / f"{key.replace('/', '__')}.png"

    def write_ensemble_prediction(
        self, ensemble: str, split: str, key: str, mask: np.ndarray
    ) -> Path:
        return write_bytes(self.ensemble_prediction_file(ensemble, split, key), mask_png(mask))

    def read_ensemble_prediction(self, ensemble: str, split: str, key: str) -> np.ndarray:
        return _read_mask(self.ensemble_prediction_file(ensemble, split, key))

    def write_ensemble(self, result: EnsembleResult) -> Path:
        return write_json(
            self.ensemble_dir(result.hash) / "metrics.json", result.model_dump(mode="json")
        )

    def read_ensemble(self, ensemble: str) -> EnsembleResult | None:
        """A scored ensemble; None when not scored yet; damaged: one-line error."""
        path = self.ensemble_dir(ensemble) / "metrics.json"
        if not path.is_file():
            return None
        try:
            return EnsembleResult.model_validate(_json(path, "an ensemble's metrics.json"))
        except ValidationError as exc:
            raise RunFolderError(
                str(path), "an ensemble's metrics.json", _first_error(exc), _REMEDY
            ) from None

    def ensembles(self) -> list[EnsembleResult]:
        """Every scored fold ensemble of the run, sorted by folder."""
        return [
            r
            for path in sorted(self.ensembles_dir.glob("*/metrics.json"))
            if (r := self.read_ensemble(path.parent.name)) is not None
        ]

    def sample_figure(self, job: str) -> Path:
        """Image, ground truth, prediction and difference of a few test images of a job."""
        return self.root / "figures" / f"samples-{job}.png"

    def cache_dir(self, dataset: str) -> Path:
        """Decoded arrays of a dataset, kept for the jobs (and the stages) after the first."""
        return _inside(self.root / "cache", dataset, "dataset name")

    # --- quality control and explanations ------------------------------------------------------

    def qc_dir(self, job: str) -> Path:
        return _inside(self.root / "qc", job, "job hash")

    def qc_file(self, job: str, name: str = QC_FILE) -> Path:
        """A file of a job's quality control: ``qc.json``, ``embeddings.npz``, ``scores.csv``,
        ``new_scores.csv``, ``output_qc.json``, ``output_qc.png``."""
        return self.qc_dir(job) / name

    def qc_jobs(self) -> list[str]:
        """The jobs with a finished input quality control (``qc.json``), sorted."""
        return sorted(p.parent.name for p in (self.root / "qc").glob("*/qc.json"))

    def explain_dir(self, job: str, image: str) -> Path:
        return _inside(_inside(self.root / "explain", job, "job hash"), image, "image name")

    def explanation_files(self) -> list[Path]:
        """Every ``explain.json`` (:data:`EXPLAIN_FILE`) of the run, sorted."""
        return sorted((self.root / "explain").glob(f"*/*/{EXPLAIN_FILE}"))

    # --- reading and writing ---------------------------------------------------------------------

    def read_plan(self) -> Plan:
        data = _json(self.plan_file, "the run's plan.json")
        try:
            return Plan.model_validate(data)
        except ValidationError as exc:
            raise RunFolderError(
                str(self.plan_file), "a plan", _first_error(exc), _REMEDY
            ) from None

    def write_plan(self, plan: Plan) -> Path:
        return write_json(self.plan_file, plan.model_dump(mode="json"))

    def read_profile_data(self) -> dict[str, Any]:
        """The run's copy of its profile as written (plain data: the record quotes it)."""
        data = _json(self.profile_file, "the run's profile.json")
        if not isinstance(data, dict):
            raise RunFolderError(str(self.profile_file), "a JSON object", type(data).__name__)
        return data

    def write_profile(self, profile: Profile) -> Path:
        return write_json(self.profile_file, profile.model_dump(mode="json", by_alias=True))

    def qc_settings(self) -> QualityControl:
        """The ``qc`` block of the run's profile (defaults when the profile has none)."""
        return QualityControl.model_validate(self.read_profile_data().get("qc", {}))

    def write_fingerprints(self, facts: Sequence[DatasetFacts]) -> Path:
        return write_json(self.fingerprint_file, {f.name: f.model_dump(mode="json") for f in facts})

    def read_fingerprints(self) -> dict[str, DatasetFacts]:
        """The datasets' facts, {} for a run folder written before fingerprint.json existed."""
        if not self.fingerprint_file.is_file():
            return {}
        data = _json(self.fingerprint_file, "the run's dataset fingerprints")
        try:
            return {name: DatasetFacts.model_validate(f) for name, f in data.items()}
        except (ValidationError, AttributeError) as exc:
            found = _first_error(exc) if isinstance(exc, ValidationError) else str(exc)
            raise RunFolderError(str(self.fingerprint_file), "dataset facts", found) from None

    def read_result(self, job: str) -> JobResult | None:
        """A finished job's result; None when it has not finished; damaged: one-line error."""
        path = self.metrics_file(job)
        if not path.is_file():
            return None
        data = _json(path, "a job's metrics.json")
        try:
            return JobResult.model_validate(data)
        except ValidationError as exc:
            raise RunFolderError(
                str(path), "a job's metrics.json", _first_error(exc), _REMEDY
            ) from None

    def finished(self, job: str) -> bool:
        """Whether the job's metrics.json reads back (a damaged one means: train it again)."""
        try:
            return self.read_result(job) is not None
        except RunFolderError:
            return False

    def write_result(self, result: JobResult) -> Path:
        """The job's metrics.json, written last (its presence means the job finished)."""
        return write_json(self.metrics_file(result.job.hash), result.model_dump(mode="json"))

    def results(self, plan: Plan | None = None) -> list[JobResult]:
        """The finished jobs' results, in plan order."""
        plan = plan or self.read_plan()
        return [r for job in plan.jobs if (r := self.read_result(job.hash)) is not None]

    def write_curves(self, job: str, history: list[dict[str, float]]) -> Path:
        return write_csv(self.curves_file(job), history, CURVE_FIELDS)

    def read_curves(self, job: str) -> list[dict[str, float | None]]:
        """The job's training curves (epoch, train_loss, val_iou, lr, seconds); [] if none."""
        path = self.curves_file(job)
        if not path.is_file():
            return []
        rows = csv.DictReader(path.read_text(encoding="utf-8").splitlines())
        return [{k: _number(v) for k, v in row.items()} for row in rows]

    def write_prediction(self, job: str, split: str, key: str, mask: np.ndarray) -> Path:
        return write_bytes(self.prediction_file(job, split, key), mask_png(mask))

    def read_prediction(self, job: str, split: str, key: str) -> np.ndarray:
        return _read_mask(self.prediction_file(job, split, key))

    def write_tables(
        self, rows: list[dict[str, Any]], chosen: dict[str, tuple[str, str, str]] | None = None
    ) -> None:
        """results.csv (every job and split) and best.csv (per dataset, the recommended
        combination's job with the best validation IoU: ``results.best_rows``)."""
        write_csv(self.results_file, rows, COLUMNS)
        write_csv(self.best_file, best_rows(rows, chosen), COLUMNS)

    # --- the lock --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, command: str = "matseg") -> Iterator[str | None]:
        """Hold ``.lock`` while this process writes the run; yields a note when a stale lock (a
        dead process on this host) was taken over. Re-entrant within one process."""
        self.root.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        note = None
        for _ in range(3):
            if _create_exclusively(self.lock_file, {**me, "command": command, "since": _now()}):
                break
            holder = _read_lock(self.lock_file)
            if holder is None:
                continue  # removed meanwhile, or being written this instant: try again
            if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                yield None  # this process already holds it (a stage inside a run)
                return
            if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                note = (
                    f"took over a stale lock of {self.root} (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('since')}, no longer running)"
                )
                self.lock_file.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                str(self.root),
                "a run folder no other process is writing",
                f"one locked by pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('since')} ({holder.get('command')})",
                f"wait for it to finish; if that process is gone, delete {self.lock_file}",
            )
        else:
            raise RunLockedError(str(self.lock_file), "a lock that can be taken", "contention")
        try:
            yield note
        finally:
            self.lock_file.unlink(missing_ok=True)


def _read_mask(path: Path) -> np.ndarray:
    """A predicted class-id PNG; a missing one is a one-line error with the remedy."""
    from PIL import Image

    if not path.is_file():
        raise RunFolderError(str(path), "a predicted mask", "no such file", _REMEDY)
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


def mask_png(mask: np.ndarray) -> bytes:
    """A class-id mask as PNG bytes (8-bit): the one encoding of predicted masks."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _number(value: str | None) -> float | None:
    try:
        x = float(value) if value is not None else float("nan")
    except ValueError:
        return None
    return x if np.isfinite(x) else None


def _first_error(exc: ValidationError) -> str:
    where, expected, found = first_problem(exc)
    return f"{where}: expected {expected}, found {found}"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _create_exclusively(path: Path, content: dict[str, Any]) -> bool:
    """Create ``path`` with ``content`` unless it exists (a hard link is atomic and exclusive,
    so no reader ever sees an empty lock)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".lock.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(content, fh)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"pid": -1, "host": socket.gethostname(), "since": "?", "command": "unreadable"}
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
