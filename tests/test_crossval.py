"""Cross-validated runs end to end: folds, out-of-fold evidence, the test split deciding nothing.

One tiny run (two decoders x three folds, one epoch each on 64 px synthetic particles) is shared
by the module; the test-mask test runs a second one on a copy of the data whose test masks are
all wrong.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matseg import metrics
from matseg.api import Run
from matseg.datasets.spec import load_spec
from matseg.job import prepare_dataset
from matseg.pipeline import run
from matseg.plan import compile_plan
from matseg.profile import load_profile
from matseg.record import read_record

PROFILE = {
    "name": "cv",
    "datasets": ["data/dataset.json"],
    "model": {"encoders": ["resnet18"], "decoders": ["unet", "fpn"], "weights": "none"},
    "training": {"batch_size": 4, "max_epochs": 1, "patch_size": 64},
    "evaluation": {"protocol": "cv", "folds": 3},
}


def _run(root: Path) -> Run:
    (root / "profile.json").write_text(json.dumps(PROFILE))
    return run(load_profile(root / "profile.json"), root / "runs", progress_bar=False)


@pytest.fixture(scope="module")
def cv_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from matseg.datasets.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("cvdata")
    write_synthetic_dataset(root / "data", kind="particles", n_images=24, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def cv_run(cv_data: Path) -> Run:
    return _run(cv_data)


def test_a_fold_job_per_combination_and_fold_each_with_its_own_hash(cv_data: Path) -> None:
    (cv_data / "p.json").write_text(json.dumps(PROFILE))
    plan = compile_plan(load_profile(cv_data / "p.json"))
    assert len(plan.jobs) == 6 and len({j.hash for j in plan.jobs}) == 6
    assert [j.fold.name for j in plan.jobs if j.fold] == ["r0f0", "r0f1", "r0f2"] * 2
    holdout = {**PROFILE, "evaluation": {"protocol": "holdout"}}
    (cv_data / "h.json").write_text(json.dumps(holdout))
    jobs = compile_plan(load_profile(cv_data / "h.json")).jobs
    assert len(jobs) == 2 and all(j.fold is None for j in jobs)
    # more repeats add jobs and keep those of repeat 0 (same hashes: resumable)
    (cv_data / "r.json").write_text(
        json.dumps({**PROFILE, "evaluation": {"protocol": "cv", "folds": 3, "repeats": 2}})
    )
    repeated = compile_plan(load_profile(cv_data / "r.json")).jobs
    assert len(repeated) == 12 and {j.hash for j in plan.jobs} < {j.hash for j in repeated}


def test_folds_are_disjoint_cover_the_development_set_and_keep_groups(cv_run: Run) -> None:
    results = [j.result for j in cv_run.jobs]
    data = prepare_dataset(results[0].job.spec)
    development = {i.key for i in data.development_items()}
    test = {i.key for i in data.inspection.split.splits["test"]}
    group = {i.key: i.group for i in data.development_items()}
    for decoder in ("unet", "fpn"):
        folds = [r.fold for r in results if r.job.decoder == decoder and r.fold]
        held = [set(f.held_out) for f in folds]
        assert set().union(*held) == development  # every development image held out ...
        assert sum(len(h) for h in held) == len(development)  # ... exactly once
        for f in folds:
            train, inner, out = set(f.train), set(f.inner_val), set(f.held_out)
            assert not (train & inner or train & out or inner & out)
            assert train | inner | out == development and not (development & test)
            groups = [{group[k] for k in part} for part in (train, inner, out)]
            assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    # the same folds for every combination, so out-of-fold scores pair image by image
    by_decoder = {
        d: [r.fold.held_out for r in results if r.job.decoder == d and r.fold]
        for d in ("unet", "fpn")
    }
    assert by_decoder["unet"] == by_decoder["fpn"]


def test_out_of_fold_metrics_equal_metrics_recomputed_from_the_saved_predictions(
    cv_run: Run,
) -> None:
    data = prepare_dataset(cv_run.jobs[0].result.job.spec)
    truth = {}
    dev = data.dataset.subset([i.key for i in data.development_items()], "oof")
    for i in range(len(dev)):
        sample = dev[i]
        truth[sample.meta.key] = sample.mask
    for job in cv_run.jobs:
        ev = job.result.evaluations["oof"]
        assert "test" not in job.result.evaluations  # a fold job never sees the test split
        confusions = []
        for image in ev.images:
            path = cv_run.folder.prediction_file(job.hash, "oof", image.key)
            pred = np.asarray(Image.open(path)).astype(np.int64)
            confusions.append(metrics.confusion_matrix(pred, truth[image.key], 2, 255))
        assert np.array_equal(np.array(confusions), np.array(ev.confusions))
        frequencies = np.array(job.result.train_class_frequencies)
        again = metrics.score_images(np.array(confusions), ["background", "particle"], frequencies)
        assert again.macro_iou == pytest.approx(ev.scores.macro_iou, abs=1e-12)
        # the microstructure quantities of truth and prediction, image by image
        fraction = ev.quantities["area_fraction:particle"]
        sizes = ev.quantities["feature_size:particle"]
        assert len(fraction.truth) == len(ev.images) == len(sizes.ks)
        for image, true_fraction, predicted_fraction in zip(
            ev.images, fraction.truth, fraction.predicted, strict=True
        ):
            path = cv_run.folder.prediction_file(job.hash, "oof", image.key)
            pred = np.asarray(Image.open(path)).astype(np.int64)
            mask = np.asarray(truth[image.key])
            assert true_fraction == pytest.approx((mask == 1).mean())
            assert predicted_fraction == pytest.approx((pred == 1).mean())
    (decision,) = cv_run.decisions()
    assert decision.evidence == "oof" and len(decision.images) == len(truth)


def test_results_rows_carry_the_targets_error_beside_iou(cv_run: Run) -> None:
    from matseg.results import results_rows

    target = "area_fraction:particle"
    rows = results_rows([j.result for j in cv_run.jobs], target)
    assert len(rows) == len(cv_run.jobs)  # one evaluated split (oof) per fold job
    for row, job in zip(rows, cv_run.jobs, strict=True):
        values = job.result.evaluations[row["split"]].quantities[target]
        error = np.array(values.predicted) - np.array(values.truth)
        assert row["target"] == target and row["target_unit"] == values.unit
        assert row["target_abs_error"] == pytest.approx(np.abs(error).mean())
        assert row["target_bias"] == pytest.approx(error.mean())
        low, high = row["target_abs_error_low"], row["target_abs_error_high"]
        assert low <= row["target_abs_error"] <= high
        assert row["target_truth"] == pytest.approx(np.mean(values.truth))
    assert all(r["target"] == "" and "target_abs_error" not in r for r in results_rows(
        [j.result for j in cv_run.jobs]))  # fmt: skip


def test_the_record_and_report_carry_the_decision_and_the_ensembles(cv_run: Run) -> None:
    record = read_record(cv_run.folder.record_file)
    (decision,) = record.decisions
    assert decision.protocol == "cv" and decision.folds == 3
    assert len(record.ensembles) == 2
    for e in record.ensembles:
        assert e.used_for_choice is False and len(e.members) == 3
        assert set(e.evaluations) == {"test"}
        assert e.evaluations["test"].n_images == record.datasets[0].splits["test"]
        assert len(e.members_macro_iou["test"]) == 3
        gap = e.selection_gap  # fold models alone on test against their out-of-fold IoU
        assert gap is not None and gap.test_images == e.evaluations["test"].n_images
        assert gap.out_of_fold_images == len(decision.images)
        members_test = np.mean(list(e.members_macro_iou["test"].values()))
        assert gap.members_test == pytest.approx(members_test)
        assert gap.ensemble_test == pytest.approx(e.evaluations["test"].macro_iou)
        assert gap.difference == pytest.approx(gap.members_test - gap.out_of_fold)
        assert gap.ci[0] <= gap.difference <= gap.ci[1]
    html = cv_run.report_path.read_text()
    assert "out-of-fold images: " in html
    assert "3-fold cross-validation of the" in html
    assert "not used for any choice" in html
    assert "Per-image IoU differences" in html


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _without_hashes(decision: dict) -> dict:
    """A decision without its job hashes (which follow the data's digest) and latencies (timed
    on this machine, used only to break a tie in parameter counts)."""
    ranking = [{**e, "jobs": None, "latency_ms": None} for e in decision["ranking"]]
    return {**decision, "ranking": ranking}


def test_no_test_image_influences_any_choice(cv_data: Path, cv_run: Run, tmp_path: Path) -> None:
    """Every test mask replaced by its inverse: the same folds, checkpoints, out-of-fold numbers
    and recommendation; only the test estimate changes."""
    shutil.copytree(cv_data / "data", tmp_path / "data")
    spec = load_spec(tmp_path / "data" / "dataset.json")
    test_items = prepare_dataset(spec).inspection.split.splits["test"]
    assert test_items
    for item in test_items:
        assert item.mask is not None
        mask = np.asarray(Image.open(item.mask))
        Image.fromarray((1 - mask).astype(np.uint8)).save(item.mask)
    corrupted = _run(tmp_path)
    a, b = cv_run.jobs, corrupted.jobs
    assert [j.hash for j in a] != [j.hash for j in b]  # the data changed: every job retrained
    for ja, jb in zip(a, b, strict=True):
        assert ja.result.fold == jb.result.fold
        assert _digest(cv_run.folder.weights_file(ja.hash)) == _digest(
            corrupted.folder.weights_file(jb.hash)
        )
        assert ja.result.evaluations["oof"].confusions == jb.result.evaluations["oof"].confusions
    da, db = read_record(cv_run.folder.record_file), read_record(corrupted.folder.record_file)
    (before,), (after,) = da.decisions, db.decisions
    assert _without_hashes(before.model_dump()) == _without_hashes(after.model_dump())
    assert before.recommended is not None
    tests_a = sorted(e.evaluations["test"].macro_iou for e in da.ensembles)
    tests_b = sorted(e.evaluations["test"].macro_iou for e in db.ensembles)
    assert tests_a != tests_b  # the test split was scored, and its masks did change


def test_the_fold_ensemble_is_the_default_deployment_model(cv_run: Run, tmp_path: Path) -> None:
    """predict, explain, qc and export take the recommended combination's fold ensemble by
    default (named ensemble-<hash>), and --job still picks one fold model."""
    from conftest import TINY_QC
    from matseg.deploy.export import export_onnx, export_package
    from matseg.deploy.predict import predict_inputs
    from matseg.explain.run import explain_image
    from matseg.profile import QualityControl
    from matseg.qc.workflow import fit_qc, load_job
    from matseg.trained import load_trained

    trained = load_trained(cv_run.folder)
    (decision,) = cv_run.decisions()
    assert trained.name.startswith("ensemble-") and len(trained.members) == 3
    assert f"{trained.job.encoder} + {trained.job.decoder}" == decision.recommended
    (ensemble,) = [e for e in read_record(cv_run.folder.record_file).ensembles
                   if e.name == decision.recommended]  # fmt: skip
    assert trained.name == f"ensemble-{ensemble.hash}"
    image = Path(ensemble.evaluations["test"].images[0].source)
    summary = predict_inputs(cv_run.folder, [image], tmp_path / "pred")
    assert summary.job == trained.name
    mask = np.asarray(Image.open(summary.predictions[0].mask))
    saved = trained.prediction("test", ensemble.evaluations["test"].images[0].key)
    assert (mask == saved).mean() > 0.99  # tiled prediction = the ensemble scored at the end
    single = trained.members[0].job.hash
    assert predict_inputs(cv_run.folder, [image], tmp_path / "one", job=single).job == single
    explained = explain_image(cv_run.folder, image, "8,8,40,40")
    assert explained["job"] == trained.name
    assert (cv_run.folder.explain_dir(trained.name, image.stem) / "explain.json").is_file()
    loaded = load_job(cv_run.folder, settings=QualityControl(**TINY_QC))
    fit_qc(loaded)
    assert loaded.folder == cv_run.folder.qc_dir(trained.name)
    saved = np.load(loaded.folder / "embeddings.npz")
    fold = trained.result.fold  # QC reads the best member's encoder: fit on what it trained on,
    assert fold is not None  # calibrate on the images it never saw
    assert {str(o) for o in saved["train/owners"]} <= set(fold.train)
    assert {str(o) for o in saved["val/owners"]} <= set(fold.held_out)
    exported = export_package(trained, tmp_path / "export")
    members = json.loads((exported / "ensemble.json").read_text())["members"]
    assert [m["fold"] for m in members] == ["r0f0", "r0f1", "r0f2"]
    assert all((exported / m["folder"] / "config.json").is_file() for m in members)
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    onnx = export_onnx(trained, exported / "model.onnx")
    assert onnx.max_abs_difference < 1e-3


def test_successive_halving_trains_rung_by_rung_and_decides_on_the_last(
    cv_data: Path, tmp_path: Path
) -> None:
    """Two rungs (1 then 2 epochs): the last rung's jobs are the grid's own (same hashes), the
    decision uses them alone, and halving.json, the record and the report say what ran."""
    shutil.copytree(cv_data / "data", tmp_path / "data")
    halving = {
        **PROFILE,
        "training": {**PROFILE["training"], "max_epochs": 2},
        "evaluation": {**PROFILE["evaluation"], "search": "halving", "halving_rate": 2,
                       "rungs": 2},
    }  # fmt: skip
    (tmp_path / "profile.json").write_text(json.dumps(halving))
    profile = load_profile(tmp_path / "profile.json")
    grid = compile_plan(profile)
    done = run(profile, tmp_path / "runs", progress_bar=False)
    log = json.loads(done.folder.halving_file.read_text())
    assert [r["epochs"] for r in log["rungs"]] == [1, 2]
    first, last = log["rungs"]
    assert len(first["jobs"]) == 6 and set(last["jobs"]) <= {j.hash for j in grid.jobs}
    kept = {name.split(": ")[-1] for name in last["combinations"]}
    assert len(last["jobs"]) == 3 * len(kept)
    executed = done.folder.read_plan().jobs
    assert {j.hash for j in executed} == set(first["jobs"]) | set(last["jobs"])
    assert all(j.rung is not None and j.rung.epochs == j.training.max_epochs for j in executed)
    (decision,) = done.decisions()
    assert {h for e in decision.ranking for h in e.jobs} == set(last["jobs"])
    assert log["epochs_run"] == sum(r["epochs_run"] for r in log["rungs"])
    record = read_record(done.folder.record_file)
    assert record.halving is not None and len(record.halving.rungs) == 2
    assert "Successive halving" in done.report_path.read_text()
