"""Quality control end to end on a tiny trained run: fit, evaluate, score, output QC, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from matseg.cli import app
from matseg.datasets.synthetic import generate
from matseg.pipeline import run as run_profile
from matseg.profile import load_profile
from matseg.qc.evaluation import acceptance_threshold
from matseg.qc.outputs import output_qc
from matseg.qc.patches import cut_patches
from matseg.qc.workflow import (
    evaluate_qc,
    fit_qc,
    load_fitted,
    load_job,
    score_new_images,
)


@pytest.fixture(scope="module")
def run(tiny_run: Path) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def grains_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another microstructure (Voronoi grains) as a folder of PNGs: a real shift."""
    folder = tmp_path_factory.mktemp("grains")
    for i in range(6):
        image, _ = generate("grains", size=64, seed=100 + i)
        Image.fromarray((255 * np.clip(image, 0, 1)).astype(np.uint8)).save(folder / f"g{i}.png")
    return folder


def test_patches_cover_the_image_flush() -> None:
    patches = cut_patches([("a", np.zeros((1, 70, 32), np.float32))], 32, 10, 0)
    assert [(w.y, w.x) for w in patches.windows] == [(0, 0), (32, 0), (38, 0)]  # last row flush
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
    val = {e: saved[f"val/{e}"] for e in loaded.settings.extractors}
    scores = fitted.detectors["knn"].score_samples(val)
    assert fitted.thresholds["knn"] == acceptance_threshold(scores, 0.95)
    assert (scores >= fitted.thresholds["knn"]).mean() >= 0.95


def test_output_qc_scores_every_prediction(run: Path) -> None:
    loaded = load_job(run)
    result = output_qc(loaded)
    metrics = json.loads(loaded.run.metrics_file(loaded.job.hash).read_text())
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


def test_run_with_qc_enabled_checks_the_best_job(run: Path, tmp_path: Path) -> None:
    """``qc.enabled`` in the profile: ``matseg run`` fits and evaluates QC of the best job."""
    profile = json.loads((run / "profile.json").read_text())
    profile["qc"] = {**profile["qc"], "enabled": True, "compare": ["knn"]}
    profile["datasets"] = [json.loads((run / "plan.json").read_text())["jobs"][0]["spec"]]
    (tmp_path / "p.json").write_text(json.dumps(profile))
    done = run_profile(load_profile(tmp_path / "p.json"), tmp_path / "runs", progress_bar=False)
    (quality,) = done.quality()
    assert quality.job.hash == done.best().hash and quality.output is not None
    assert (quality.folder / "qc.json").is_file() and (quality.folder / "output_qc.json").is_file()
    written = (quality.folder / "qc.json").stat().st_mtime_ns
    again = run_profile(
        load_profile(tmp_path / "p.json"), tmp_path / "runs", resume=True, progress_bar=False
    )
    assert again.trained == [] and again.qc().input == quality.input
    assert (quality.folder / "qc.json").stat().st_mtime_ns == written  # kept, not redone
