"""Parallel executors give the same results table as the sequential loop, and a Ray cluster
finishes the grid when a worker process is killed in the middle of a job."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from matseg.pipeline import run as run_profile
from matseg.profile import load_profile

SCORES = ("dataset", "split", "encoder", "decoder", "macro_iou", "foreground_iou", "dice",
          "pixel_accuracy", "best_val_iou", "epochs")  # fmt: skip


def _profile(root: Path, name: str) -> Path:
    from matseg.datasets.synthetic import write_synthetic_dataset

    if not (root / "data").exists():
        write_synthetic_dataset(root / "data", kind="particles", n_images=16, size=64, seed=3)
    path = root / f"{name}.json"
    path.write_text(json.dumps({
        "name": name,
        "datasets": ["data/dataset.json"],
        "model": {"encoders": ["resnet18"], "decoders": ["unet", "fpn"], "weights": "none"},
        "training": {"batch_size": 4, "max_epochs": 3, "patch_size": 64},
        "evaluation": {"protocol": "holdout"},
    }))  # fmt: skip
    return path


def _table(folder: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((folder / "results.csv").open()))
    return sorted(({k: r[k] for k in SCORES} for r in rows), key=lambda r: r["decoder"])


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """The grid run one job after another in this process, on one thread (as a worker runs)."""
    root = tmp_path_factory.mktemp("executors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_profile(
            load_profile(_profile(root, "grid")), root / "seq", progress_bar=False
        )
    finally:
        torch.set_num_threads(threads)
    return root, _table(summary.path)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs for 2 worker processes")
def test_local_worker_processes_give_the_same_table(sequential, tmp_path: Path) -> None:
    root, expected = sequential
    summary = run_profile(load_profile(_profile(root, "grid")), tmp_path, workers=2)
    assert sorted(summary.trained) == sorted(j.hash for j in summary.plan.jobs)
    assert _table(summary.path) == expected
    assert (summary.path / "report.html").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_cluster_survives_a_killed_worker(sequential, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    root, expected = sequential
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                    "--include-dashboard=false", *common], check=True, env=env,
                   capture_output=True, timeout=120)  # fmt: skip
    try:
        subprocess.run([ray_cli, "start", f"--address=127.0.0.1:{port}",
                        "--node-ip-address=127.0.0.1", *common], check=True, env=env,
                       capture_output=True, timeout=120)  # fmt: skip
        profile = load_profile(_profile(root, "grid"))
        result: dict[str, object] = {}

        def grid() -> None:
            try:
                result["summary"] = run_profile(
                    profile,
                    tmp_path,
                    executor="ray",
                    address=f"127.0.0.1:{port}",
                    progress_bar=False,
                )
            except Exception as exc:  # noqa: BLE001 - re-raised in the test thread below
                result["error"] = exc

        thread = threading.Thread(target=grid)
        thread.start()
        killed = None
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline and thread.is_alive():
            for pid_file in tmp_path.glob("*/jobs/*/worker.pid"):
                if not (pid_file.parent / "metrics.json").exists():
                    time.sleep(1.0)  # well inside training
                    killed = int(pid_file.read_text())
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.2)
        thread.join(timeout=600)
        assert "error" not in result, result.get("error")
        assert killed is not None, "no job was running to kill"
        summary = result["summary"]
        assert _table(summary.path) == expected
        pids = {int(p.read_text()) for p in summary.path.glob("jobs/*/worker.pid")}
        assert killed not in pids  # the killed job was retried by another worker process
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
