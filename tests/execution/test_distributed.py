"""Data-parallel training of one job (Lightning DDP), tested on CPU processes with gloo.

Two spawned processes stand in for two GPUs: the validation images are shared out without
repeats, the confusion matrices are summed across processes, and rank 0's best weights come back
to the caller. Cluster launchers (SLURM, torchrun) are recognised as Lightning recognises them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from matseg import metrics
from matseg.datasets.dataset import MicrographDataset
from matseg.datasets.synthetic import write_synthetic_dataset
from matseg.job import prepare_dataset
from matseg.models import build_model
from matseg.plan import compile_plan
from matseg.profile import Training, load_profile
from matseg.training import (
    ValidationShards,
    WholeImages,
    distribution,
    fit,
    predict_logits,
    process_rank,
)

CLUSTER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID",
                     "SLURM_JOB_NAME", "SLURM_NODEID", "SLURM_LOCALID", "TORCHELASTIC_RUN_ID",
                     "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _profile(tmp_path: Path, **training: object) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        write_synthetic_dataset(data, kind="particles", n_images=16, size=64, seed=0)
    path = tmp_path / f"profile-{len(training)}.json"
    path.write_text(json.dumps({
        "name": "ddp", "datasets": ["data/dataset.json"],
        "model": {"encoders": ["resnet18"], "decoders": ["unet"], "weights": "none"},
        "training": {"batch_size": 4, "max_epochs": 3, "patience": 10, "patch_size": 64,
                     "accelerator": "cpu", **training},
        "evaluation": {"protocol": "holdout"},
    }))  # fmt: skip
    return path


def _val_iou(model: torch.nn.Module, images: WholeImages, keys: range, k: int) -> float:
    cm = np.zeros((k, k), dtype=np.int64)
    with torch.no_grad():
        for i in keys:
            x, y = images[i]
            pred = predict_logits(model, x[None], False).argmax(1)
            cm += metrics.confusion_matrices(pred, y[None], k, 255).sum(0).numpy()
    return float(np.nanmean(metrics.iou(cm)))


def test_two_processes_validate_every_image_once_and_hand_back_the_best(tmp_path: Path) -> None:
    profile = load_profile(_profile(tmp_path, devices=2))
    job = compile_plan(profile).jobs[0]
    data = prepare_dataset(job.spec, job.classes, None)
    train, val = data.dataset.split("train"), data.dataset.split("val")
    # an odd count, so a padding sampler would repeat an image on one process
    val = MicrographDataset(val.spec, val.refs[:3], val.cache)
    images = WholeImages(val)
    torch.manual_seed(job.seed)
    model, _ = build_model(job.encoder, job.decoder, data.in_channels, len(data.classes), "none")
    fitted = fit(model, train, val, len(data.classes), job.training, job.seed, 255,
                 tmp_path / "log", progress_bar=False)  # fmt: skip
    assert fitted.epochs_run == 3 and len(fitted.history) == 3
    assert fitted.stopped_by == "max epochs" and 0 <= fitted.best_epoch < 3
    assert fitted.best_val_iou == max(h["val_iou"] for h in fitted.history)
    assert all(np.isfinite(h["train_loss"]) for h in fitted.history)
    assert not list((tmp_path / "log").glob("fit-outcome*"))  # handed back, then removed
    # the weights handed back are the best epoch's: they score exactly the logged best IoU on
    # ALL validation images, which neither process's share alone gives
    k = len(data.classes)
    whole = _val_iou(fitted.model, images, range(len(images)), k)
    assert whole == pytest.approx(fitted.best_val_iou, abs=1e-9)
    shares = [_val_iou(fitted.model, images, range(r, len(images), 2), k) for r in (0, 1)]
    assert all(abs(share - whole) > 1e-6 for share in shares)


def test_validation_shards_cover_each_image_once() -> None:
    shards = ValidationShards(7)
    assert list(shards) == list(range(7)) and len(shards) == 7  # no process group: all


def test_devices_enter_the_job_hash_and_strategy_does_not(tmp_path: Path) -> None:
    one = compile_plan(load_profile(_profile(tmp_path)))
    two = compile_plan(load_profile(_profile(tmp_path, devices=2)))
    spawn = compile_plan(load_profile(_profile(tmp_path, devices=2, strategy="ddp_spawn")))
    explicit_one = compile_plan(load_profile(_profile(tmp_path, devices=1, num_nodes=1)))
    assert one.jobs[0].hash != two.jobs[0].hash
    assert two.jobs[0].hash == spawn.jobs[0].hash and two.profile_hash == spawn.profile_hash
    assert one.jobs[0].hash == explicit_one.jobs[0].hash


def test_cluster_launchers_are_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    training = Training(devices=4, num_nodes=2, strategy="auto")
    assert distribution(training)["strategy"] == "ddp_spawn" and process_rank() == 0
    assert distribution(Training(devices=1))["strategy"] == "auto"
    # an srun task of a SLURM batch job: the processes exist, Lightning's ddp joins them
    for name, value in {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_NAME": "grid",
                        "SLURM_NODEID": "1", "SLURM_LOCALID": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert distribution(training) == {"devices": 4, "num_nodes": 2, "strategy": "ddp"}
    assert process_rank() == 5
    # an interactive shell inside an allocation is not a launcher
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    assert distribution(training)["strategy"] == "ddp_spawn" and process_rank() == 0
    # torchrun
    for name in ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name)
    for name, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "GROUP_RANK": "1",
                        "LOCAL_WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "x"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert distribution(training)["strategy"] == "ddp" and process_rank() == 3


def test_a_non_zero_rank_trains_in_step_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under srun / torchrun every process runs `matseg run`; rank 0 alone writes the run."""
    import matseg.job as job_module
    from matseg.pipeline import run
    from matseg.training import FitResult

    calls: list[str] = []

    def fake_fit(model: torch.nn.Module, *args: object, **kwargs: object) -> FitResult:
        calls.append(str(args[-2]))  # the job folder it would log to
        return FitResult(model, 0, 0.5, 1, 0.1, [], "max epochs")

    monkeypatch.setattr(job_module, "fit", fake_fit)
    monkeypatch.setenv("RANK", "1")
    profile = load_profile(_profile(tmp_path, devices=2))
    done = run(profile, tmp_path / "runs", progress_bar=False)
    assert done.plan is not None and len(calls) == 1
    assert done.trained == [job.hash for job in done.plan.jobs]
    assert not done.path.exists() or not any(done.path.rglob("*.*"))
