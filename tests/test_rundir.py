"""The run folder: one owner of its files, an old folder still opens, the lock, damaged files,
and job hashes that follow the data, not where it is mounted."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from matseg.api import Run
from matseg.cli import app
from matseg.models import build_model, save_weights
from matseg.plan import compile_plan
from matseg.profile import load_profile
from matseg.record import build_record, read_record, write_record
from matseg.report import build_report
from matseg.rundir import RunDir, RunFolderError, RunLockedError

FIXTURE = Path(__file__).parent / "fixtures" / "run-v0.1.0"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A run folder written by matseg 0.1.0 (before RunDir): no fingerprint.json, metrics.json
    without in_channels, its data gone. Weights are not committed (8 MB): the test writes
    seeded ones of the job's architecture."""
    run = tmp_path / FIXTURE.name
    shutil.copytree(FIXTURE, run)
    (job,) = json.loads((run / "plan.json").read_text())["jobs"]
    torch.manual_seed(0)
    model, _ = build_model(job["encoder"], job["decoder"], 1, 2, "none")
    save_weights(model, run / "jobs" / job["hash"] / "model.safetensors")
    return run


def test_an_old_run_folder_opens(old_run: Path) -> None:
    run = Run.open(old_run)
    (job,) = run.jobs
    assert job.result.in_channels is None  # not recorded before 0.2
    with (old_run / "results.csv").open() as fh:
        (written,) = list(csv.DictReader(fh))
    (row,) = run.results
    assert row["macro_iou"] == pytest.approx(float(written["macro_iou"]), abs=1e-6)
    assert row["job"] == written["job"] == job.hash and run.best() == job
    assert run.best("synthetic-particles") == job and run.job(job.hash[:4]) == job
    model = job.model()  # its channel count is read off the weights file
    assert next(model.parameters()).shape[1] == 1 and not model.training
    quality = run.qc(job)
    assert quality is not None and quality.verdict["detector"] == "mahalanobis"
    assert not quality.ready and quality.output is not None
    assert run.record.jobs[0].hash == job.hash  # the stored record validates
    assert run.report_path == old_run / "report.html"
    assert job.curves()[0]["epoch"] == 0
    # rebuilding the record is a pure read of the folder: no data needed, the gap is said
    record = build_record(old_run)
    assert "no dataset fingerprint" in record.datasets[0].notes[0]
    assert record.quality[0].job == job.hash
    write_record(old_run)
    assert build_report(old_run).html.is_file()


def test_damaged_metrics_are_one_line_and_count_as_unfinished(old_run: Path) -> None:
    rundir = RunDir(old_run)
    (job,) = rundir.read_plan().jobs
    rundir.metrics_file(job.hash).write_text('{"job": {"hash"')  # truncated
    assert not rundir.finished(job.hash)
    with pytest.raises(RunFolderError, match=r"metrics\.json.*damaged.*--resume"):
        rundir.read_result(job.hash)
    res = CliRunner().invoke(app, ["report", str(old_run)])
    assert res.exit_code == 2 and "metrics.json" in res.output and "Traceback" not in res.output


def test_user_text_never_becomes_a_path_outside_the_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    for bad in ("../escaped", "/abs/olute", "a/../../b"):
        with pytest.raises(Exception, match="inside"):
            run.cache_dir(bad)
    assert run.cache_dir("nasa_super") == tmp_path / "r" / "cache" / "nasa_super"
    assert run.prediction_file("j", "test", "a/b#z001").name == "a__b#z001.png"


def test_the_lock_names_its_holder_and_takes_over_a_stale_one(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.root.mkdir()
    # a live holder (the parent process) on this host: refused, naming pid and host
    run.lock_file.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                         "since": "t", "command": "matseg run x"}))  # fmt: skip
    holder = rf"pid {os.getppid()} on {socket.gethostname()}"
    with pytest.raises(RunLockedError, match=holder), run.lock():
        pass
    # a dead holder: taken over, with a note; released after
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.lock_file.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                         "since": "t", "command": "matseg run x"}))  # fmt: skip
    with run.lock() as note:
        assert note is not None and "stale" in note and str(dead.pid) in note
        with run.lock() as inner:  # re-entrant: a stage inside the run
            assert inner is None
        assert run.lock_file.is_file()
    assert not run.lock_file.exists()


def test_a_second_run_on_a_locked_folder_stops_with_one_line(tiny_run: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    rundir = RunDir(tiny_run)
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "since": "t", "command": "x"}
        rundir.lock_file.write_text(json.dumps(lock))
        profile = tiny_run.parent.parent / "profile.json"
        res = CliRunner().invoke(
            app, ["run", str(profile), "--out", str(tiny_run.parent), "--resume"]
        )
        assert res.exit_code == 2, res.output
        assert f"locked by pid {holder.pid}" in res.output and "Traceback" not in res.output
    finally:
        holder.kill()
        rundir.lock_file.unlink(missing_ok=True)


def _profile(folder: Path, data: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "p.json"
    path.write_text(json.dumps({
        "name": "p", "datasets": [str(data / "dataset.json")],
        "model": {"encoders": ["resnet18"], "decoders": ["unet"], "weights": "none"},
        "training": {"patch_size": 32},
        "evaluation": {"protocol": "holdout"},
    }))  # fmt: skip
    return path


def test_job_hashes_follow_the_data_not_its_mount_point(tmp_path: Path) -> None:
    from matseg.datasets.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "here", kind="pores", n_images=8, size=32, seed=0)
    shutil.copytree(tmp_path / "here", tmp_path / "mounted" / "elsewhere")
    here = compile_plan(load_profile(_profile(tmp_path / "a", tmp_path / "here")))
    moved = compile_plan(load_profile(_profile(tmp_path / "b", tmp_path / "mounted/elsewhere")))
    assert [j.hash for j in here.jobs] == [j.hash for j in moved.jobs]
    assert here.jobs[0].spec.root != moved.jobs[0].spec.root  # each finds its own copy
    # one changed pixel in one image: another job
    image = sorted((tmp_path / "mounted/elsewhere/images").iterdir())[0]
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF
    image.write_bytes(bytes(data))
    changed = compile_plan(load_profile(_profile(tmp_path / "b", tmp_path / "mounted/elsewhere")))
    assert changed.jobs[0].hash != here.jobs[0].hash


def test_file_digests_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matseg.datasets import digest
    from matseg.datasets.spec import load_spec
    from matseg.datasets.synthetic import write_synthetic_dataset

    spec = load_spec(
        write_synthetic_dataset(tmp_path / "d", kind="pores", n_images=4, size=32, seed=0)
    )
    first = digest.data_digest(spec, tmp_path / "cache")
    opened: list[Path] = []
    real_open = Path.open

    def spy(self: Path, *args: object, **kwargs: object) -> object:
        opened.append(self)
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", spy)
    assert digest.data_digest(spec, tmp_path / "cache") == first
    assert not [p for p in opened if p.suffix == ".png"]  # no image read again


def test_the_run_writes_its_fingerprint_and_reads_back_typed(tiny_run: Path) -> None:
    run = Run.open(tiny_run)
    facts = run.folder.read_fingerprints()
    (name,) = facts
    assert facts[name].in_channels == 1 and facts[name].splits["test"] > 0
    (job,) = run.jobs
    assert job.result.in_channels == 1 and job.job.training.seeds == [job.job.seed]
    assert run.folder.sample_figure(job.hash).is_file()
    assert read_record(tiny_run).figures == {job.hash: f"figures/samples-{job.hash}.png"}
