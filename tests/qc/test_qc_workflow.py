"""Quality control end to end on a tiny trained run: fit, evaluate, score, output QC, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from matseg.cli import app
from matseg.datasets.synthetic import generate, write_synthetic_dataset
from matseg.execution.local import run_profile
from matseg.profile import load_profile
from matseg.qc.evaluation import acceptance_threshold
from matseg.qc.outputs import output_qc
from matseg.qc.workflow import (
    cut_patches,
    evaluate_qc,
    fit_qc,
    grid_windows,
    load_fitted,
    load_job,
    score_new_images,
)

QC = {
    "extractors": ["encoder", "classical"],
    "detector": "knn",
    "compare": ["forte", "mahalanobis", "knn"],
    "patch_size": 32,
    "max_patches_per_image": 8,
    "synthetic_shifts": False,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-job run on synthetic particles (resnet18-UNet, two epochs)."""
    root = tmp_path_factory.mktemp("qcrun")
    write_synthetic_dataset(root / "data", kind="particles", n_images=24, size=64, seed=0)
    profile = {
        "name": "qc-tiny",
        "datasets": ["data/dataset.json"],
        "model": {"encoders": ["resnet18"], "decoders": ["unet"], "weights": "none"},
        "training": {"batch_size": 4, "max_epochs": 2, "patch_size": 64},
        "qc": QC,
    }
    (root / "profile.json").write_text(json.dumps(profile))
    return run_profile(
        load_profile(root / "profile.json"), root / "runs", progress_bar=False
    ).folder


@pytest.fixture(scope="module")
def grains_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another microstructure (Voronoi grains) as a folder of PNGs: a real shift."""
    folder = tmp_path_factory.mktemp("grains")
    for i in range(6):
        image, _ = generate("grains", size=64, seed=100 + i)
        Image.fromarray((255 * np.clip(image, 0, 1)).astype(np.uint8)).save(folder / f"g{i}.png")
    return folder


def test_grid_windows_cover_the_image_flush() -> None:
    assert grid_windows(64, 64, 32) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    assert grid_windows(70, 32, 32)[-1] == (38, 0)  # last row flush with the edge
    patches = cut_patches([("a", np.zeros((1, 20, 40), np.float32))], 32, 10, 0)
    assert patches.arrays.shape == (2, 1, 32, 32)  # padded to the patch, two columns


def test_fit_evaluate_and_score(run: Path, grains_folder: Path) -> None:
    loaded = load_job(run)
    fitted = fit_qc(loaded)
    # the threshold is fixed on validation patches: at least 95% of them accepted
    assert set(fitted.thresholds) == {"knn", "forte", "mahalanobis"}
    result = evaluate_qc(fitted, [str(grains_folder)])
    rep = result["scenarios"][grains_folder.name]
    # particles vs grains is an obvious shift: the kNN baseline must see it
    assert rep["knn"]["auroc"] > 0.9
    assert 0 <= rep["forte"]["auroc"] <= 1 and rep["knn"]["n_ood"] == 6 * 4
    assert result["verdict"]["detector"] == "knn"
    assert result["verdict"]["ready"] == (rep["knn"]["auroc"] >= 0.95)
    saved = json.loads((loaded.folder / "qc.json").read_text())
    assert saved["thresholds"] == pytest.approx(result["thresholds"])
    assert (loaded.folder / "scores.csv").read_text().startswith("scenario,image,score,flagged")
    # refitting from the saved embeddings gives the same detectors and thresholds
    again = load_fitted(load_job(run))
    assert again.thresholds == pytest.approx(fitted.thresholds)
    np.testing.assert_allclose(again.id_test["knn"], fitted.id_test["knn"])
    # streaming: an image's score does not depend on what else is scored with it
    rows = score_new_images(again, [grains_folder])
    alone = score_new_images(again, [grains_folder / "g0.png"])
    assert alone[0]["score"] == pytest.approx(rows[0]["score"])
    assert sum(r["flagged"] for r in rows) >= 4  # most of the shifted images are flagged


def test_threshold_accepts_the_validation_share(run: Path) -> None:
    loaded = load_job(run)
    fitted = fit_qc(loaded)
    saved = np.load(loaded.folder / "embeddings.npz")
    val = {e: saved[f"val/{e}"] for e in QC["extractors"]}
    scores = fitted.detectors["knn"].score_samples(val)
    assert fitted.thresholds["knn"] == acceptance_threshold(scores, 0.95)
    assert (scores >= fitted.thresholds["knn"]).mean() >= 0.95


def test_output_qc_scores_every_prediction(run: Path) -> None:
    loaded = load_job(run)
    result = output_qc(loaded)
    metrics = json.loads((run / "jobs" / loaded.job.hash / "metrics.json").read_text())
    assert len(result["images"]) == metrics["evaluations"]["test"]["n_images"]
    assert all(0 <= r["iou"] <= 1 and np.isfinite(r["score"]) for r in result["images"])
    assert (loaded.folder / "output_qc.png").stat().st_size > 1000


def test_cli_qc_commands(run: Path, grains_folder: Path) -> None:
    runner = CliRunner()
    fit = runner.invoke(app, ["qc", "fit", "--run", str(run), "--no-shifts"])
    assert fit.exit_code == 0, fit.output
    assert "deployment readiness" in fit.output and "output QC" in fit.output
    ev = runner.invoke(
        app, ["qc", "evaluate", "--run", str(run), "--ood", str(grains_folder), "--json"]
    )
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output)["scenarios"][grains_folder.name]["knn"]["auroc"] > 0.9
    sc = runner.invoke(app, ["qc", "score", "--run", str(run), str(grains_folder / "g1.png")])
    assert sc.exit_code == 0 and "g1" in sc.output
    bad = runner.invoke(app, ["qc", "score", "--run", str(run), "--job", "zzz", str(grains_folder)])
    assert bad.exit_code == 2 and "--job zzz" in bad.output
