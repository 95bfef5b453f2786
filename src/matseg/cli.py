"""The ``matseg`` command line: one Typer app; every command is a thin shell over a function.

Errors meant for people (``MatsegError``) are printed as one line with exit code 2, never as a
traceback.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from matseg import __version__
from matseg.errors import UserError, os_error_line

app = typer.Typer(
    name="matseg",
    help="Which segmentation architecture to trust for your micrographs, and when to stop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="Check, describe and fetch datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
profile_app = typer.Typer(
    help="Write, validate and describe benchmark profiles.", no_args_is_help=True
)
app.add_typer(profile_app, name="profile")
qc_app = typer.Typer(
    help="Quality control: flag out-of-distribution inputs and atypical predictions.",
    no_args_is_help=True,
)
app.add_typer(qc_app, name="qc")

# Pipes and logs get a wide console (rich would assume 80 columns and squash the tables).
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM (a scheduler's preemption, ``timeout``), raised in the main thread so
    every layer unwinds: the run's lock is released, temporary files are removed, and no file
    is left half-written (each is a temporary file and a rename). A BaseException, so no
    ``except Exception`` on the way swallows it; Lightning re-raises it after its teardown."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """The first SIGINT or SIGTERM stops the command cleanly; the handlers before it come
    back at once, so a second signal acts as it always does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum: int, frame: object) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise Interrupted(signum)

    for sig in previous:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _friendly_errors() -> Iterator[None]:
    try:
        with _stop_on_signals():
            yield
    except Interrupted as exc:
        err.print(
            f"[bold red]stopped[/] by {exc}: the work finished so far is kept; run the same "
            "command again to continue (matseg run: add --resume; it reuses every finished job)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(128 + exc.signum) from None
    except UserError as exc:
        err.print(f"[bold red]error[/]: {exc.line()}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # disk full, read-only folder, a file in the way: no traceback
        err.print(f"[bold red]error[/]: {os_error_line(exc)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except MemoryError:
        err.print(
            "[bold red]error[/]: out of memory; use smaller tiles or batches (--batch-size), "
            "or a machine with more memory",
            highlight=False,
        )
        raise typer.Exit(2) from None


@contextmanager
def _progress(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar as a callback(done, total); silent when disabled (e.g. --json)."""
    if not enabled:
        yield lambda done, total: None
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"matseg {__version__}")
        raise typer.Exit(0)


# --- datasets -----------------------------------------------------------------------------------


def _load_any(target: Path, root: Path | None) -> Any:
    from matseg.datasets.infer import spec_for_folder
    from matseg.datasets.spec import load_spec

    spec = spec_for_folder(target) if target.is_dir() else load_spec(target)
    if root is not None:
        spec = spec.model_copy(update={"root": str(root.resolve())})
    return spec


def _print_report(rep: Any) -> None:
    out.print(f"[bold]{rep.name}[/]  {rep.modality}  {rep.material}  ({rep.root})", highlight=False)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    enc = rep.encoding["type"] if rep.encoding else "none"
    table.add_row("encoding", f"{enc} ({rep.encoding_source}: {rep.encoding_reason})")
    table.add_row("pairs found", str(rep.n_pairs))
    table.add_row("2D items", str(rep.n_items))
    table.add_row("unpaired", f"{len(rep.unpaired_images)} images, {len(rep.unpaired_masks)} masks")
    table.add_row("sizes", ", ".join(f"{k} x{v}" for k, v in rep.sizes.items()))
    table.add_row("dtypes", ", ".join(f"{k} x{v}" for k, v in rep.dtypes.items()))
    table.add_row("channels", ", ".join(f"{k} x{v}" for k, v in rep.channels.items()))
    table.add_row(
        "splits",
        ", ".join(
            f"{k} {v['items']} ({v['groups']} groups, {v['tiles']} tiles)"
            for k, v in rep.splits.items()
        ),
    )
    table.add_row("leaks", str(len(rep.leaks)))
    table.add_row("tiling", rep.tiling)
    out.print(table)
    if rep.classes:
        classes = Table(title="classes", title_justify="left")
        for col in ("id", "class", "pixels", "frequency"):
            classes.add_column(col, justify="right" if col != "class" else "left")
        for i, name in enumerate(rep.classes):
            classes.add_row(
                str(i),
                name,
                f"{rep.class_pixels.get(name, 0):,}",
                f"{rep.class_frequencies.get(name, 0):.4f}",
            )
        out.print(classes)
    if rep.problems:
        # One line per problem (no table): long file names stay whole and greppable.
        out.print(f"[bold]problems ({len(rep.problems)})[/]")
        style = {"error": "red", "warning": "yellow", "note": "dim"}
        for p in rep.problems:
            out.print(
                f"  [{style.get(p.level, '')}]{p.level}[/] {p.where}: {p.message}",
                highlight=False,
                soft_wrap=True,
            )
    verdict = "[green]usable[/]" if rep.usable else "[red]not usable[/]"
    out.print(f"verdict: {verdict}")


@datasets_app.command("check")
def datasets_check(
    spec: Annotated[
        Path, typer.Argument(help="Dataset spec JSON, or a folder with images/ and masks/.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    root: Annotated[Path | None, typer.Option(help="Override the spec's data root.")] = None,
    fingerprint_out: Annotated[
        Path | None, typer.Option("--fingerprint", help="Write the dataset fingerprint JSON here.")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Keep decoded arrays here for reuse.")
    ] = None,
) -> None:
    """Validate a dataset: pairs, sizes, dtypes, classes, splits, leaks and every problem."""
    from matseg.atomic import write_json
    from matseg.datasets.check import inspect_dataset, report
    from matseg.datasets.fingerprint import fingerprint

    with _friendly_errors():
        loaded = _load_any(spec, root)
        with _progress(f"reading {loaded.name}", enabled=not as_json) as progress:
            ins = inspect_dataset(loaded, cache_dir=cache_dir, progress=progress)
        rep = report(ins)
        if fingerprint_out is not None and ins.stats:
            write_json(fingerprint_out, fingerprint(ins))
    if as_json:
        sys.stdout.write(rep.model_dump_json(indent=2) + "\n")
    else:
        _print_report(rep)
    raise typer.Exit(0 if rep.usable else 1)


@datasets_app.command("schema")
def datasets_schema() -> None:
    """Print the JSON Schema of a dataset spec (for editors and validators)."""
    from matseg.datasets.spec import spec_json_schema

    sys.stdout.write(json.dumps(spec_json_schema(), indent=2) + "\n")


@datasets_app.command("list")
def datasets_list() -> None:
    """The public materials datasets matseg knows, with modality, licence and size."""
    from matseg.datasets.catalog import load_catalog, local_status

    table = Table(title="matseg catalog")
    for col in ("name", "modality", "material", "files", "MB", "licence", "downloaded"):
        table.add_column(col)
    with _friendly_errors():
        for entry in load_catalog():
            status = local_status(entry.name)
            table.add_row(
                entry.name,
                entry.modality,
                entry.material,
                str(len(entry.files)),
                f"{entry.total_size / 1e6:.1f}",
                entry.licence,
                "yes" if status.complete else f"{status.files_verified}/{status.files_total}",
            )
    out.print(table)


@datasets_app.command("info")
def datasets_info(
    name: Annotated[str, typer.Argument(help="Catalog name (see 'datasets list').")],
) -> None:
    """Source, licence, citation, files and local state of one catalog dataset."""
    from matseg.datasets.catalog import get_entry, local_status

    with _friendly_errors():
        entry = get_entry(name)
        status = local_status(name)
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    src = entry.source
    commit = (
        f"{src.commit}{' (abbreviated)' if src.commit_abbreviated else ''}" if src.commit else "-"
    )
    for key, value in (
        ("title", entry.title),
        ("modality", entry.modality),
        ("material", entry.material),
        ("task", entry.task),
        ("description", entry.description),
        ("licence", f"{entry.licence} {entry.licence_note}".strip()),
        ("citation", entry.citation or "-"),
        ("repository", src.repository),
        ("commit", commit),
        ("source note", src.note or "-"),
        ("example spec", entry.example_spec),
        ("files", f"{len(entry.files)} ({entry.total_size / 1e6:.1f} MB)"),
        ("local copy", f"{status.path}: {status.files_verified}/{status.files_total} verified"),
    ):
        table.add_row(key, str(value))
    out.print(table, highlight=False)


@datasets_app.command("download")
def datasets_download(
    name: Annotated[str, typer.Argument(help="Catalog name (see 'datasets list').")],
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache folder (default: ~/.cache/matseg).")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="Fetch from this mirror instead of the upstream URLs.")
    ] = None,
) -> None:
    """Download a catalog dataset into the cache, verifying every file's sha256 (resumable)."""
    from matseg.datasets.catalog import download, get_entry

    with _friendly_errors():
        entry = get_entry(name)
        with _progress(f"downloading {name}") as progress:
            done: set[str] = set()

            def on_file(path: str, got: int, total: int) -> None:
                if got >= total:
                    done.add(path)
                progress(len(done), len(entry.files))

            folder = download(name, cache_dir=cache_dir, base_url=base_url, progress=on_file)
    out.print(f"{name}: verified in {folder}", highlight=False)


# --- profiles, plans, runs ---------------------------------------------------------------------


@profile_app.command("schema")
def profile_schema() -> None:
    """Print the JSON Schema of a profile."""
    from matseg.profile import profile_json_schema

    sys.stdout.write(json.dumps(profile_json_schema(), indent=2) + "\n")


@profile_app.command("validate")
def profile_validate(profile: Annotated[Path, typer.Argument(help="Profile JSON.")]) -> None:
    """Explain every error of a profile: field path, what was expected, what was found."""
    from matseg.errors import MatsegError
    from matseg.plan import check_model_grid
    from matseg.profile import Profile, profile_problems, read_profile_json, resolve_datasets

    with _friendly_errors():
        data = read_profile_json(profile)
        problems = profile_problems(data)
        if not problems:
            loaded = Profile.model_validate(data)
            loaded._base_dir = profile.resolve().parent
            specs = resolve_datasets(loaded)
            try:  # what `run` would refuse once the data is read, refused now
                check_model_grid(loaded.model)
            except MatsegError as exc:
                problems = [f"model.{exc.line()}"]
    if problems:
        for line in problems:
            err.print(f"[red]error[/]: {profile}: {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    names = ", ".join(s.name for s in specs)
    out.print(f"{profile}: valid ({len(specs)} datasets: {names})", highlight=False)


@profile_app.command("init")
def profile_init(
    path: Annotated[Path, typer.Argument(help="Where to write the starting profile.")] = Path(
        "profile.json"
    ),
    dataset: Annotated[str, typer.Option(help="Dataset spec the profile points at.")] = (
        "examples/nasa-super.json"
    ),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starting profile (the paper protocol, a CPU-friendly grid)."""
    from matseg.atomic import write_json
    from matseg.profile import starting_profile

    if path.exists() and not force:
        err.print(f"[red]error[/]: {path}: expected a new file, found an existing one; use --force")
        raise typer.Exit(2)
    with _friendly_errors():
        write_json(path, starting_profile(dataset))
    out.print(f"wrote {path}; edit it, then: matseg profile validate {path}", highlight=False)


def _plan_table(plan: Any) -> Table:
    table = Table(
        title=f"plan for {plan.profile_name} ({len(plan.jobs)} jobs)", title_justify="left"
    )
    for col in ("job", "dataset", "encoder", "decoder", "weights", "seed"):
        table.add_column(col)
    for job in plan.jobs:
        table.add_row(job.hash, job.dataset, job.encoder, job.decoder, job.weights, str(job.seed))
    return table


@app.command("plan")
def plan_command(
    profile: Annotated[Path, typer.Argument(help="Profile JSON.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Compile a profile into jobs (dataset x encoder x decoder x seed): a dry run."""
    from matseg.plan import compile_plan
    from matseg.profile import load_profile

    with _friendly_errors():
        plan = compile_plan(load_profile(profile))
    if as_json:
        sys.stdout.write(plan.model_dump_json(indent=2) + "\n")
    else:
        out.print(_plan_table(plan))


def _results_table(
    rows: list[dict[str, Any]], title: str, metrics: list[str] | None = None
) -> Table:
    """Table 3 / 2 in the terminal; ``metrics``: the profile's task.metrics (IoU always)."""
    from matseg.report.tables import OPTIONAL_SCORES as SCORES
    from matseg.report.tables import epochs_cell

    extra = [m for m in SCORES if metrics is None or m in metrics]
    table = Table(title=title, title_justify="left")
    columns = ("dataset", "split", "model", "IoU [95% CI]", "fg IoU",
               *(SCORES[m][0] for m in extra), "majority", "all-fg", "epochs", "time")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in columns[:3] else "right")

    def f(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"

    for r in rows:
        ci = f"{f(r['macro_iou'])} [{f(r['macro_iou_low'])}, {f(r['macro_iou_high'])}]"
        table.add_row(
            r["dataset"], f"{r['split']} {r.get('fold') or ''}".strip(),
            f"{r['encoder']} + {r['decoder']}", ci,
            f(r["foreground_iou"]), *(f(r[SCORES[m][1]]) for m in extra),
            f(r["baseline_majority_iou"]), f(r["baseline_all_foreground_iou"]),
            epochs_cell(r["epochs"], r.get("converged")), f"{r['train_seconds']:.0f} s",
        )  # fmt: skip
    return table


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class _PlainProgress(logging.Handler):
    """Progress for a log file, not a terminal (a SLURM job, nohup, CI): one stdout line when
    a job starts, one per epoch (job, epoch, loss, validation IoU, time per epoch, what is left
    of the job and of the grid), and the training's heartbeat inside a long epoch."""

    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.write = write
        self.label, self.index, self.total = "", 0, 0
        self.job_start = self.epochs_s = 0.0
        self.epochs = 0
        self.jobs_s: list[float] = []

    def job(self, label: str, n: int, total: int) -> None:
        """The pipeline's progress callback: job ``n`` of ``total`` starts (``done``: ended)."""
        now = time.perf_counter()
        if self.label:
            self.jobs_s.append(now - self.job_start)
        self.label, self.index, self.total, self.job_start = label, n, total, now
        self.epochs, self.epochs_s = 0, 0.0
        if label == "done":
            return
        left = (
            f"; about {_minutes(sum(self.jobs_s) / len(self.jobs_s) * (total - n))} left"
            if self.jobs_s
            else ""
        )
        self.write(f"job {n + 1} of {total}: {label}{left}")

    def emit(self, record: logging.LogRecord) -> None:
        from matseg.training import EPOCH_RECORD

        entry = getattr(record, EPOCH_RECORD, None)
        if entry is None:
            if record.name == "matseg.training" and "into the epoch" in record.getMessage():
                self.write(f"  {self.label}: {record.getMessage()}")
            return
        self.epochs += 1
        self.epochs_s += float(entry["seconds"])
        per_epoch = self.epochs_s / self.epochs
        budget = entry.get("max_epochs") or entry["epoch"] + 1
        job_left = max(0, budget - entry["epoch"] - 1) * per_epoch
        later = self.total - self.index - 1
        per_job = sum(self.jobs_s) / len(self.jobs_s) if self.jobs_s else budget * per_epoch
        self.write(
            f"  {self.label}: epoch {entry['epoch'] + 1} of at most {budget}, loss "
            f"{entry['train_loss']:.4f}, val IoU {entry['val_iou']:.4f}, {per_epoch:.1f} s per "
            f"epoch; at most {_minutes(job_left)} left for this job, about "
            f"{_minutes(job_left + later * per_job)} for the grid"
        )


@contextmanager
def _grid_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on a terminal; plain lines on stdout otherwise (see _PlainProgress)."""
    if sys.stdout.isatty():
        with _progress("grid") as grid:
            yield lambda label, n, total: grid(n, total)
        return
    plain = _PlainProgress(lambda line: print(line, flush=True))
    logger = logging.getLogger("matseg.training")
    logger.addHandler(plain)
    try:
        yield plain.job
    finally:
        logger.removeHandler(plain)


def _run_and_report(profile: Any, out_dir: Path, resume: bool, **executor: Any) -> Path:
    from matseg.pipeline import run

    with _grid_progress() as progress:
        done = run(
            profile,
            out_dir,
            resume=resume,
            progress=progress,
            progress_bar=sys.stdout.isatty(),
            say=lambda m: err.print(m, highlight=False),
            **executor,
        )
    from matseg.report.recommend import recommend

    metrics = list(profile.task.metrics)
    out.print(_results_table(done.results, "results (Table 3)", metrics))
    _print_recommendation(recommend(done.record))
    best = [done.job(h) for h in dict.fromkeys(row["job"] for row in done.best_results())]
    for quality in done.quality(best):
        _print_qc_result(
            {"input": quality.input, "output": quality.output, "folder": str(quality.folder)}
        )
    out.print(
        f"run folder: {done.path}  "
        f"(trained {len(done.trained)}, reused {len(done.reused)}); report: {done.report_path}",
        highlight=False,
    )
    return done.path


@app.command("run")
def run_command(
    profile: Annotated[Path, typer.Argument(help="Profile JSON.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of run folders.")] = Path(
        "runs"
    ),
    resume: Annotated[bool, typer.Option(help="Continue an existing run folder.")] = False,
    executor: Annotated[
        str, typer.Option(help="local (this machine) or ray (a Ray cluster).")
    ] = "local",
    workers: Annotated[int, typer.Option(min=1, help="local: jobs run in parallel processes.")] = 1,
    address: Annotated[
        str | None, typer.Option(help="ray: cluster address (default: start a local one).")
    ] = None,
    cpus_per_job: Annotated[int, typer.Option(min=1, help="ray: CPUs requested per job.")] = 1,
) -> None:
    """Train and evaluate every job of a profile; write the run folder and results tables."""
    from matseg.profile import load_profile

    with _friendly_errors():
        _run_and_report(load_profile(profile), out_dir, resume, executor=executor,
                        workers=workers, address=address, cpus_per_job=cpus_per_job)  # fmt: skip


# --- quality control ----------------------------------------------------------------------------

RunOption = Annotated[Path, typer.Option("--run", help="Run folder (runs/<name>-<hash>).")]
JobOption = Annotated[
    str | None,
    typer.Option(
        "--job",
        help="A job hash (prefix) for one model, or ensemble-<hash> (default: the recommended "
        "combination's fold ensemble after cross-validation, else its best job by validation "
        "IoU).",
    ),
]


def _qc_settings(run: Path, extractors: list[str] | None, detector: str | None) -> Any:
    from matseg.rundir import RunDir

    settings = RunDir.existing(run).qc_settings()
    update: dict[str, Any] = {}
    if extractors:
        update["extractors"] = extractors
    if detector:
        update["detector"] = detector
    return settings.model_copy(update=update)


def _qc_table(result: dict[str, Any]) -> Table:
    chosen = result["verdict"]["detector"]
    table = Table(title=f"quality control of {result['job_label']} (score: typicality)")
    for col in ("scenario", "detector", "AUROC", "FPR@95TPR", "AUPR-In", "AUPR-Out", "F1*", "prec*",
                "imgs flagged", "max-F1 (oracle)"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("scenario", "detector") else "right")
    for group in ("scenarios", "synthetic"):
        for name, reports in result[group].items():
            for det, r in reports.items():
                style = "bold" if det == chosen else "dim"
                table.add_row(
                    name, det, f"{r['auroc']:.3f}", f"{r['fpr_at_95_tpr']:.3f}",
                    f"{r['aupr_in']:.3f}", f"{r['aupr_out']:.3f}", f"{r['f1']:.3f}",
                    f"{r['precision']:.3f}", f"{r['ood_images_flagged']:.0%}",
                    f"{r['oracle_max_f1']:.3f}", style=style,
                )  # fmt: skip
    return table


def _print_qc(result: dict[str, Any]) -> None:
    out.print(_qc_table(result))
    chosen = result["verdict"]["detector"]
    out.print(
        f"* at the threshold fixed on validation ({result['settings']['accept']:.0%} accepted): "
        f"same-distribution test images flagged "
        f"{result['id_test_images_flagged'].get(chosen, float('nan')):.0%}, patches "
        f"{result['id_test_patches_flagged'][chosen]:.1%}",
        highlight=False,
    )
    v = result["verdict"]
    state = "[bold green]READY[/]" if v["ready"] else "[bold red]NOT READY[/]"
    out.print(f"deployment readiness ({v['detector']}, AUROC >= {v['ready_auroc']}): {state}: "
              f"{v['reason']}", highlight=False)  # fmt: skip


@qc_app.command("fit")
def qc_fit(
    run: RunOption,
    job: JobOption = None,
    extractor: Annotated[
        list[str] | None, typer.Option("--extractor", help="Extractors (repeat); default: profile.")
    ] = None,
    detector: Annotated[str | None, typer.Option(help="Detector behind the verdict.")] = None,
    shifts: Annotated[bool, typer.Option(help="Also evaluate synthetic shifts.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print qc.json instead.")] = False,
) -> None:
    """Fit typicality on the job's training patches; evaluate its declared shifts and outputs."""
    from matseg.qc.pipeline import run_quality_control

    with _friendly_errors():
        say = (lambda m: None) if as_json else (lambda m: err.print(m, highlight=False))
        settings = _qc_settings(run, extractor, detector)
        result = run_quality_control(run, job, settings, synthetic=shifts, progress=say)
        if as_json:
            out.print_json(data={"input": result["input"], "output": result["output"]})
            return
        _print_qc_result(result)


def _print_qc_result(result: dict[str, Any]) -> None:
    """Input QC table and verdict, then the output QC summary and where the files are."""
    _print_qc(result["input"])
    outputs = result["output"]
    worst = sorted(outputs["images"], key=lambda r: r["score"])[:5]
    out.print(
        f"output QC (mask morphology): Spearman(typicality, IoU) = "
        f"{outputs['spearman_typicality_vs_iou']:.2f}; least typical: "
        + ", ".join(f"{r['image']} (IoU {r['iou']:.2f})" for r in worst),
        highlight=False,
    )
    out.print(f"written: {result['folder']}", highlight=False)


@qc_app.command("evaluate")
def qc_evaluate(
    run: RunOption,
    ood: Annotated[
        list[str], typer.Option("--ood", help="Dataset spec or image folder of a shift (repeat).")
    ],
    job: JobOption = None,
    shifts: Annotated[bool, typer.Option(help="Also evaluate synthetic shifts.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """AUROC, FPR@95, AUPR-In/Out, F1 and precision at the fixed threshold; readiness verdict."""
    from matseg.qc.workflow import evaluate_qc, load_fitted, load_job

    with _friendly_errors():
        say = (lambda m: None) if as_json else (lambda m: err.print(m, highlight=False))
        fitted = load_fitted(load_job(run, job))
        result = evaluate_qc(fitted, ood, synthetic=shifts, progress=say)
        if as_json:
            out.print_json(data=result)
        else:
            _print_qc(result)


@qc_app.command("score")
def qc_score(
    run: RunOption,
    images: Annotated[list[Path], typer.Argument(help="Images or folders to score.")],
    job: JobOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Typicality and flag of each new image, each scored on its own (streaming)."""
    from matseg.qc.workflow import load_fitted, load_job, score_new_images

    with _friendly_errors():
        fitted = load_fitted(load_job(run, job))
        rows = score_new_images(fitted, images)
        if as_json:
            out.print_json(data=rows)
            return
        table = Table(title=f"typicality ({rows[0]['detector']}, threshold {rows[0]['threshold']})")
        for col in ("image", "score", "flagged", "patches flagged"):
            table.add_column(col)
        for r in rows:
            flag = "[bold red]ATYPICAL[/]" if r["flagged"] else "ok"
            table.add_row(
                r["image"], f"{r['score']:.3f}", flag, f"{r['patches_flagged']}/{r['patches']}"
            )
        out.print(table)
        out.print(f"written: {fitted.loaded.file('new_scores.csv')}", highlight=False)


# --- explanations -------------------------------------------------------------------------------


@app.command("explain")
def explain_command(
    run: RunOption,
    images: Annotated[
        list[Path],
        typer.Option(
            "--image",
            help="The micrograph to explain; repeat for several.",
        ),
    ],
    roi: Annotated[
        str | None,
        typer.Option(help="Region A: mask image, COCO / VIA polygon JSON, or y0,x0,y1,x1."),
    ] = None,
    job: JobOption = None,
    kernel: Annotated[
        Literal["blur", "mean", "zero", "noise"], typer.Option(help="Perturbation kernel.")
    ] = "blur",
    window: Annotated[int, typer.Option(min=1, help="Window size in pixels.")] = 16,
    stride: Annotated[int, typer.Option(min=1, help="Window step (1: exact mode).")] = 8,
    target: Annotated[
        Literal["probabilities", "mask"], typer.Option(help="Compare probabilities or mask.")
    ] = "probabilities",
    precision: Annotated[
        Literal["auto", "32", "bf16-mixed"],
        typer.Option(help="32 (exact), bf16-mixed (faster), or auto (bf16 where native)."),
    ] = "32",
    compile: Annotated[
        Literal["auto", "on", "off"],
        typer.Option(help="Compile the model: auto (from 4000 windows), on or off."),
    ] = "auto",
    faithful: Annotated[bool, typer.Option(help="Run the deletion-curve check.")] = True,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Counterfactual influence heatmap H of each image inside the expert's region A."""
    from matseg.explain.run import ExplainOptions, explain_image

    options = ExplainOptions(
        kernel, window, stride, target, precision, faithful, compile,  # type: ignore[arg-type]
    )  # fmt: skip
    results = []
    for image in images:
        with _friendly_errors(), _progress("perturbed windows", not as_json) as bar:
            folder = _explain_folder(out_dir, image, len(images))
            results.append(explain_image(run, image, roi, job, options, folder, progress=bar))
        if not as_json:
            _print_explanation(results[-1])
    if as_json:
        out.print_json(data=results[0] if len(results) == 1 else results)


def _explain_folder(out_dir: Path | None, image: Path, count: int) -> Path | None:
    """--out for one image; one subfolder per image stem when several are explained."""
    if out_dir is None or count == 1:
        return out_dir
    return out_dir / image.stem


def _print_explanation(result: dict[str, Any]) -> None:
    conc = result["concentration"]
    compiled = ", compiled" if result["compiled"] else ""
    out.print(
        f"{result['job_label']}: {result['windows_run']} windows run, "
        f"{result['windows_skipped_out_of_reach']} out of reach, {result['seconds']:.1f} s "
        f"(batch {result['batch_size']}, {result['precision']}{compiled})\n"
        f"H inside A: {conc['roi_share']:.0%} of the mass on {conc['roi_area']:.0%} of the image; "
        f"on predicted boundaries: {conc['boundary_share']:.0%} on {conc['boundary_area']:.0%}",
        highlight=False,
    )
    for note in result["notes"]:
        out.print(f"note: {note}", highlight=False)
    faith = result["faithfulness"]
    if faith:
        rows = ", ".join(
            f"{100 * q:g}%: {t:.3f} vs {r:.3f}"
            for q, t, r in zip(faith["fractions"], faith["top"], faith["random"], strict=True)
        )
        out.print(
            f"faithfulness (change inside A, top-H blocks vs random): {rows}; "
            f"AUC ratio {faith['auc_ratio']:.2f}",
            highlight=False,
        )
    out.print(f"written: {result['folder']}", highlight=False)


# --- record, report, comparison, recommendation ----------------------------------------------


def _print_recommendation(rec: Any) -> None:
    from matseg.report import gap_words

    for d in rec.datasets:
        out.print(f"[bold]{d.dataset}[/]: use {d.use} ({d.verdict})", highlight=False)
        out.print(f"  protocol: {d.protocol}", highlight=False)
        for reason in [*d.reasons, d.test_estimate, gap_words(d), d.ensemble_note]:
            if reason:
                out.print(f"  - {reason}", highlight=False)
    out.print(f"across contexts: {rec.contexts.summary}", highlight=False)
    for f in rec.feedback:
        state = "ready" if f.ready else "[red]NOT READY[/]"
        out.print(f"deployment, {f.dataset}: {state}", highlight=False)
        for a in f.advice:
            out.print(f"  - {a}", highlight=False)


@app.command("report")
def report_command(
    run: Annotated[Path, typer.Argument(help="Run folder, or a record.json file.")],
    refresh: Annotated[
        bool,
        typer.Option(
            help="Read the datasets again first: fingerprint.json and sample figures (for run "
            "folders that lack them, or whose data changed)."
        ),
    ] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for the report (default: the run).")
    ] = None,
) -> None:
    """Rebuild the evaluation record from the run folder (new QC, heatmaps) and the report
    (HTML, Markdown, CSV tables); a record.json file gives its report alone."""
    from matseg.pipeline import refresh_data_facts
    from matseg.record import write_record
    from matseg.report import build_report
    from matseg.rundir import RunDir

    with _friendly_errors():
        if run.is_dir() and RunDir(run).plan_file.is_file():
            if refresh:
                for path in refresh_data_facts(RunDir(run)):
                    out.print(f"refreshed: {path}", highlight=False)
            out.print(f"record: {write_record(run)}", highlight=False)
        files = build_report(run, out_dir)
        _print_recommendation(files.recommendation)
        out.print(f"report: {files.html}  (and {files.markdown.name}, tables/*.csv)",
                  highlight=False)  # fmt: skip


OVERLAP = {True: "yes (may be noise)", False: "no", None: "-"}


@app.command("compare")
def compare_command(
    run_a: Annotated[Path, typer.Argument(help="First run folder or record.json.")],
    run_b: Annotated[Path, typer.Argument(help="Second run folder or record.json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """What changed between two runs: protocol, provenance, IoU, verdicts, recommendations."""
    from matseg.record import read_record
    from matseg.report.compare import compare_records

    with _friendly_errors():
        diff = compare_records(read_record(run_a), read_record(run_b))
    if as_json:
        print(json.dumps(diff.to_dict(), indent=2, default=str))
        return
    for title, rows in (("profile", diff.profile_changes), ("provenance", diff.provenance_changes)):
        for key, a, b in rows:
            out.print(f"{title} {key}: {a!r} -> {b!r}", highlight=False)
    table = Table(title=f"IoU: {diff.run_a} -> {diff.run_b}", title_justify="left")
    for col in ("dataset", "combination", "seed", "split", "A", "B", "change", "CIs overlap"):
        table.add_column(col)

    for c in diff.scores:
        table.add_row(c.dataset, c.combination, str(c.seed), c.split,
                      "-" if c.iou_a is None else f"{c.iou_a:.3f}",
                      "-" if c.iou_b is None else f"{c.iou_b:.3f}",
                      "-" if c.delta is None else f"{c.delta:+.3f}",
                      OVERLAP[c.intervals_overlap])  # fmt: skip
    out.print(table)
    for label in diff.only_in_a:
        out.print(f"only in A: {label}", highlight=False)
    for label in diff.only_in_b:
        out.print(f"only in B: {label}", highlight=False)
    for d, a, b in diff.verdicts:
        out.print(f"QC verdict {d}: {a} -> {b}", highlight=False)
    for d, a, b in diff.recommendations:
        out.print(f"recommendation {d}: {a} -> {b}", highlight=False)


@app.command("recommend")
def recommend_command(
    profile: Annotated[Path, typer.Argument(help="Profile JSON of the new benchmark.")],
    runs: Annotated[
        list[Path] | None,
        typer.Option("--runs", help="Your earlier run folders to learn from (repeat)."),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="How many combinations to list.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the suggestion as JSON.")] = False,
) -> None:
    """Before training: the combinations to try first, from similar earlier contexts."""
    from matseg.report.knowledge import suggest_for_profile

    with _friendly_errors():
        suggestions = suggest_for_profile(profile, list(runs or []))
    if as_json:
        print(json.dumps([s.to_dict() for s in suggestions], indent=2))
        return
    for s in suggestions:
        level = f", {s.difficulty}" if s.difficulty else ""
        material = s.material or "material unstated"
        out.print(f"[bold]{s.dataset}[/] ({s.modality}, {material}{level})", highlight=False)
        if s.note:
            out.print(f"  note: {s.note}", highlight=False)
        for n, c in enumerate(s.combinations[:top], 1):
            out.print(f"  {n}. {c.encoder} + {c.decoder}: relative IoU {c.score:.3f} "
                      f"({c.contexts} context(s))", highlight=False)  # fmt: skip
        out.print("  drew on:", highlight=False)
        for m in s.drew_on:
            why = ", ".join(m.why) or "nothing in common"
            out.print(f"    - {m.context} (similarity {m.similarity:.2f}: {why}); source: "
                      f"{m.source}", highlight=False)  # fmt: skip


# --- deployment ---------------------------------------------------------------------------------


@app.command("predict")
def predict_command(
    inputs: Annotated[list[Path], typer.Argument(help="Images, folders, TIFF stacks, volumes.")],
    run: RunOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for masks and predictions.csv.")],
    job: JobOption = None,
    overlap: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Tile overlap fraction (blended).")
    ] = 0.25,
    batch_size: Annotated[int, typer.Option(min=1, help="Tiles per forward pass.")] = 8,
    precision: Annotated[
        Literal["auto", "32", "bf16-mixed"] | None,
        typer.Option(help="32, bf16-mixed or auto (bf16 where native; default: the job's)."),
    ] = None,
    axis: Annotated[int, typer.Option(help="Volumes: slice along this axis (0 = z).")] = 0,
    fuse_axes: Annotated[
        bool, typer.Option(help="Volumes: average the three orthogonal passes.")
    ] = False,
    probabilities: Annotated[
        bool, typer.Option(help="Also write class probabilities (float16 TIFF).")
    ] = False,
    pixel_size: Annotated[
        float | None,
        typer.Option("--pixel-size", help="µm per pixel (default: the training data's)."),
    ] = None,
) -> None:
    """Apply a run's model (default: best validation IoU) to new images and volumes, tiled;
    predictions.csv holds each input's quantities beside its QC flag, quantities-summary.csv
    their batch means over the unflagged inputs."""
    from matseg.deploy.predict import PredictOptions, predict_inputs

    if axis not in (0, 1, 2):
        raise typer.BadParameter("--axis must be 0, 1 or 2")
    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        raise typer.BadParameter("--pixel-size must be a finite size > 0 in µm")
    options = PredictOptions(
        overlap, batch_size, precision, axis, fuse_axes, probabilities, pixel_size_um=pixel_size
    )
    with _friendly_errors():
        summary = predict_inputs(
            run, inputs, out_dir, job, options, say=lambda m: out.print(m, highlight=False)
        )
    flagged = sum(bool(r["flagged"]) for r in summary.quality)
    qc = f"; QC: {flagged} of {len(summary.quality)} images flagged" if summary.quality else ""
    out.print(
        f"{len(summary.predictions)} inputs predicted with job {summary.job} into {out_dir} "
        f"(predictions.csv, quantities-summary.csv){qc}",
        highlight=False,
    )
    for row in summary.batch:
        if row["quantity"].startswith("area_fraction") and row["mean"] is not None:
            ci = (f" [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"
                  if row["ci_low"] is not None else "")  # fmt: skip
            out.print(f"  {row['quantity']}: {row['mean']:.4g}{ci} over {row['images']} "
                      "unflagged inputs", highlight=False)  # fmt: skip


@app.command("quantify")
def quantify_command(
    source: Annotated[
        Path,
        typer.Argument(help="A dataset spec, a folder with images/ and masks/, or a mask folder."),
    ],
    pixel_size: Annotated[
        float | None, typer.Option("--pixel-size", help="µm per pixel (default: the spec's).")
    ] = None,
    csv_out: Annotated[
        Path | None, typer.Option("--out", help="Write every image's quantities to this CSV.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Microstructure quantities of masks: area fractions, feature counts and sizes, grain size."""
    import dataclasses

    from matseg.atomic import write_csv
    from matseg.quantify import QuantityRow, quantify

    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        raise typer.BadParameter("--pixel-size must be a finite size > 0 in µm")
    with _friendly_errors():
        table = quantify(source, pixel_size)
        rows = [dataclasses.asdict(r) for r in table.rows]
        if csv_out is not None:
            write_csv(csv_out, rows, [f.name for f in dataclasses.fields(QuantityRow)])
    if as_json:
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                  for k, v in r.items()} for r in rows]  # fmt: skip
        sys.stdout.write(json.dumps(clean, indent=2, ensure_ascii=False) + "\n")
        return
    images = len({r["image"] for r in rows})
    view = Table(title=f"{table.source}: {images} masks, classes {', '.join(table.classes)}")
    for column in ("quantity", "class", "images", "mean", "95% CI", "unit"):
        view.add_column(column, justify="right" if column in ("images", "mean") else "left")
    for s in table.summary():
        ci = f"[{s.ci[0]:.4g}, {s.ci[1]:.4g}]" if math.isfinite(s.ci[0]) else "-"
        mean = f"{s.mean:.4g}" if math.isfinite(s.mean) else "undefined"
        view.add_row(s.quantity, s.class_name, str(s.n_images), mean, ci, s.unit)
    out.print(view)
    for note in table.notes:
        out.print(note, highlight=False)
    if csv_out is not None:
        out.print(f"per-image quantities: {csv_out}", highlight=False)


@app.command("export")
def export_command(
    run: RunOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the exported model.")],
    job: JobOption = None,
    onnx: Annotated[bool, typer.Option(help="Also write model.onnx (checked).")] = True,
) -> None:
    """A job's model (default: the recommended fold ensemble) as safetensors + config + model
    card (smp from_pretrained) and ONNX."""
    from matseg.deploy.export import export_onnx, export_package
    from matseg.rundir import RunDir
    from matseg.trained import load_trained

    with _friendly_errors():
        trained = load_trained(RunDir.existing(run), job)
        folder = export_package(trained, out_dir)
        files = "fold-*/, ensemble.json" if trained.members else "config.json, model.safetensors"
        out.print(f"{trained.label}: {folder} ({files}, README.md)", highlight=False)
        if onnx:
            result = export_onnx(trained, out_dir / "model.onnx")
            out.print(f"ONNX: {result.path} (opset {result.opset}); onnxruntime vs PyTorch on "
                      f"{result.input_shape}: max |difference| {result.max_abs_difference:.2e}",
                      highlight=False)  # fmt: skip


# --- demo ---------------------------------------------------------------------------------------


DEMO_EPOCHS = 30


@app.command("demo")
def demo(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the generated data and the run.")
    ] = Path("matseg-demo"),
    kind: Annotated[
        Literal["pores", "particles", "grains", "phases"],
        typer.Option(help="Synthetic microstructure."),
    ] = "pores",
    seed: Annotated[int, typer.Option(min=0, help="Seed for the generator and the split.")] = 0,
    n_images: Annotated[
        int, typer.Option(min=4, help="Tiles to generate (each micrograph is cut into 4).")
    ] = 48,
    encoder: Annotated[str, typer.Option(help="Encoder of the grid.")] = "tu-tf_efficientnet_lite0",
    weights: Annotated[str, typer.Option(help="Encoder weights.")] = "efficientnet-lite0",
    decoders: Annotated[
        list[str] | None, typer.Option("--decoder", help="Decoders (repeat the option).")
    ] = None,
    max_epochs: Annotated[int, typer.Option(min=1, help="Epoch budget per job.")] = DEMO_EPOCHS,
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds (2 or more).")] = 3,
) -> None:
    """The offline quickstart: generate micrographs, check them, train and compare a small grid."""
    from matseg.atomic import write_json
    from matseg.datasets.check import inspect_dataset, report
    from matseg.datasets.spec import load_spec
    from matseg.datasets.synthetic import write_synthetic_dataset
    from matseg.profile import demo_profile, load_profile
    from matseg.rundir import RunDir

    with _friendly_errors():
        data = out_dir / "data"
        spec_path = write_synthetic_dataset(data, kind=kind, n_images=n_images, size=128, seed=seed)
        out.print(f"generated {n_images} [bold]{kind}[/] tiles in {data}", highlight=False)
        spec = load_spec(spec_path)
        with _progress(f"reading {spec.name}") as progress:
            ins = inspect_dataset(spec, progress=progress)
        rep = report(ins)
        _print_report(rep)
        if not rep.usable:
            raise typer.Exit(1)
        profile_path = write_json(
            out_dir / "demo-profile.json",
            demo_profile(
                str(spec_path.resolve()),
                encoder,
                weights,
                list(decoders) if decoders else None,
                max_epochs,
                folds,
            ),
        )
        out.print(f"profile: {profile_path}", highlight=False)
        folder = _run_and_report(load_profile(profile_path), out_dir / "runs", resume=True)
        out.print(f"dataset fingerprint: {RunDir(folder).fingerprint_file}", highlight=False)


def main() -> None:  # pragma: no cover - console entry point
    app()
