"""End to end: a profile trains, is evaluated once, writes its run folder, resumes after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matseg.datasets.synthetic import write_synthetic_dataset
from matseg.pipeline import run as run_profile
from matseg.profile import load_profile
from matseg.results import best_rows

METRIC_COLUMNS = ["dataset", "split", "encoder", "decoder", "macro_iou", "macro_iou_low",
                  "macro_iou_high", "foreground_iou", "dice", "pixel_accuracy", "weighted_iou",
                  "iou_per_class", "best_val_iou", "epochs", "best_epoch", "job"]  # fmt: skip


def _profile(tmp_path: Path, **training: object) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        write_synthetic_dataset(data, kind="particles", n_images=16, size=64, seed=0)
    profile = {
        "name": "tiny",
        "datasets": ["data/dataset.json"],
        "task": {"objective": "find particles"},
        "model": {
            "encoders": ["resnet18"],
            "decoders": ["unet", "deeplabv3plus"],
            "weights": "none",
        },
        "training": {
            "batch_size": 4,
            "max_epochs": 4,
            "patience": 10,
            "patch_size": 64,
            **training,
        },
        "evaluation": {"protocol": "holdout"},
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    return path


def _metric_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open() as fh:
        return [{k: row[k] for k in METRIC_COLUMNS} for row in csv.DictReader(fh)]


def test_run_writes_the_run_folder_and_is_repeatable(tmp_path: Path) -> None:
    profile = load_profile(_profile(tmp_path))
    first = run_profile(profile, tmp_path / "a", progress_bar=False)
    second = run_profile(profile, tmp_path / "b", progress_bar=False)
    folder = first.path
    assert folder.name.startswith("tiny-")
    for name in ("profile.json", "plan.json", "results.csv", "best.csv"):
        assert (folder / name).is_file(), name
    jobs = json.loads((folder / "plan.json").read_text())["jobs"]
    assert len(jobs) == 2
    for job in jobs:
        job_dir = folder / "jobs" / job["hash"]
        for name in ("model.safetensors", "metrics.json", "curves.csv", "log.txt"):
            assert (job_dir / name).is_file(), name
        metrics = json.loads((job_dir / "metrics.json").read_text())
        test = metrics["evaluations"]["test"]
        assert set(test["baselines"]) == {"majority class", "all foreground"}
        assert len(list((job_dir / "predictions" / "test").glob("*.png"))) == test["n_images"]
        assert metrics["weights"]["source"] == "none"
        # holdout: val is evaluated (the decision's evidence), train never
        assert "val" in metrics["evaluations"] and "train" not in metrics["evaluations"]
    # the same profile and seed give identical test metrics on CPU
    assert _metric_rows(folder) == _metric_rows(second.path)
    # resuming trains nothing
    again = run_profile(profile, tmp_path / "a", resume=True, progress_bar=False)
    assert again.trained == [] and len(again.reused) == 2


def test_existing_run_folder_needs_resume(tmp_path: Path) -> None:
    from matseg.errors import SpecError

    profile = load_profile(_profile(tmp_path, max_epochs=1))
    run_profile(profile, tmp_path / "runs", progress_bar=False)
    with pytest.raises(SpecError, match="--resume"):
        run_profile(profile, tmp_path / "runs", progress_bar=False)


def test_best_combination_is_chosen_by_validation_not_test() -> None:
    rows = [
        {"dataset": "d", "split": "test", "best_val_iou": 0.9, "macro_iou": 0.5, "job": "a"},
        {"dataset": "d", "split": "test", "best_val_iou": 0.8, "macro_iou": 0.99, "job": "b"},
        {
            "dataset": "d",
            "split": "different_test",
            "best_val_iou": 0.95,
            "macro_iou": 0.1,
            "job": "c",
        },
    ]
    assert [r["job"] for r in best_rows(rows)] == ["a"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(tmp_path: Path) -> None:
    """SIGKILL `matseg run` while the second job trains; --resume ends with the same table."""
    path = _profile(tmp_path, max_epochs=12, patience=50)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference = subprocess.run(
        [sys.executable, "-m", "matseg", "run", str(path), "--out", str(tmp_path / "ref")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-2000:]
    ref_folder = next((tmp_path / "ref").iterdir())
    # Lightning's banners, tips and library deprecations stay off the terminal (in the job log)
    said = reference.stdout + reference.stderr
    for chatter in ("GPU available", "TPU available", "Tip:", "litlogger", "deprecated"):
        assert chatter not in said, chatter
    assert "results (Table 3)" in reference.stdout

    proc = subprocess.Popen(
        [sys.executable, "-m", "matseg", "run", str(path), "--out", str(tmp_path / "killed")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    finished: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        finished = list((tmp_path / "killed").glob("*/jobs/*/metrics.json"))
        if finished:
            break
        time.sleep(0.05)
    assert finished and proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.5)  # well inside the second job
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    folder = next((tmp_path / "killed").iterdir())
    assert not (folder / "results.csv").exists()
    done_before = {p.parent.name for p in folder.glob("jobs/*/metrics.json")}
    assert len(done_before) == 1
    first_mtime = next(folder.glob("jobs/*/metrics.json")).stat().st_mtime_ns

    resumed = subprocess.run(
        [sys.executable, "-m", "matseg", "run", str(path), "--out", str(tmp_path / "killed"),
         "--resume"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trained 1, reused 1" in resumed.stdout
    assert "took over a stale lock" in resumed.stderr  # the killed process's .lock
    assert (
        next(folder.glob(f"jobs/{done_before.pop()}/metrics.json")).stat().st_mtime_ns
        == first_mtime
    )
    assert _metric_rows(folder) == _metric_rows(ref_folder)


def test_d4_test_time_augmentation_is_exactly_equivariant() -> None:
    """Averaging over the 8 turns and mirrors makes the prediction turn with the image."""
    import torch

    from matseg.models import build_model
    from matseg.training import predict_probabilities

    torch.manual_seed(0)
    model, _ = build_model("resnet18", "unet", 1, 3)
    model.eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        base = predict_probabilities(model, x, False, "d4")
        turned = predict_probabilities(model, torch.rot90(x, 1, (2, 3)), False, "d4")
        mirrored = predict_probabilities(model, torch.flip(x, (2,)), False, "d4")
        plain = predict_probabilities(model, x, False, "none")
    torch.testing.assert_close(turned, torch.rot90(base, 1, (2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mirrored, torch.flip(base, (2,)), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain, base)  # an untrained net is not equivariant by itself
    torch.testing.assert_close(base.sum(dim=1), torch.ones(1, 64, 64))
