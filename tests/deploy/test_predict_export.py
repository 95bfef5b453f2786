"""matseg predict (large images, stacks, volumes, QC flags) and matseg export (ONNX, smp folder)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

from matseg.cli import app
from matseg.deploy.predict import PredictOptions, is_volume, predict_inputs
from matseg.explain.roi import read_image
from matseg.trained import load_trained
from matseg.training import predict_probabilities


@pytest.fixture(scope="module")
def qc_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run with its quality control fitted."""
    from matseg.qc.pipeline import run_quality_control

    run = tmp_path_factory.mktemp("deploy") / tiny_run.name
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("qc", "explain"))
    run_quality_control(run)
    return run


def _images(run: Path) -> list[Path]:
    plan = json.loads((run / "plan.json").read_text())
    return sorted(Path(plan["jobs"][0]["spec"]["root"], "images").iterdir())


def test_large_image_stack_and_volume_with_qc_flags(qc_run: Path, tmp_path: Path) -> None:
    tiles = [np.asarray(Image.open(p)) for p in _images(qc_run)[:6]]
    big = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)])
    Image.fromarray(big).save(tmp_path / "big.png")  # 128 x 192: several 64 px tiles
    volume = np.stack([tiles[0]] * 5 + [tiles[1]] * 4)[:, :, :48]  # (9, 64, 48)
    tifffile.imwrite(tmp_path / "vol.tif", volume)
    assert is_volume(tmp_path / "vol.tif") and not is_volume(tmp_path / "big.png")
    out = tmp_path / "pred"
    summary = predict_inputs(qc_run, [tmp_path / "big.png", tmp_path / "vol.tif"], out,
                             options=PredictOptions(probabilities=True))  # fmt: skip
    image_pred, volume_pred = summary.predictions
    mask = np.asarray(Image.open(image_pred.mask))
    assert mask.shape == big.shape[:2] and image_pred.tiles == 3 * 4  # starts 0,48,64 x 0,48,96,128
    assert tifffile.imread(volume_pred.mask).shape == volume.shape
    assert tifffile.imread(volume_pred.probabilities).shape == (2, *volume.shape)
    # the tiled mask of one tile-sized region matches predicting that tile alone in its interior
    trained = load_trained(qc_run)
    first = read_image(trained.data.inspection.spec, _images(qc_run)[0]).image
    with torch.no_grad():
        alone = predict_probabilities(trained.model, torch.from_numpy(first)[None], False)
    agree = (alone[0].argmax(0).numpy() == mask[:64, :64])[8:56, 8:56].mean()
    assert agree > 0.9
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["kind"] for r in rows] == ["image", "volume"]
    assert rows[0]["typicality"] != "" and rows[1]["flagged_slices"] != ""
    assert summary.quality and {"score", "flagged"} <= set(summary.quality[0])
    # each input's microstructure quantities sit in its row, beside its QC flag
    column = "area_fraction:particle (1)"
    assert float(rows[0][column]) == pytest.approx((mask == 1).mean(), abs=1e-6)
    assert rows[0]["feature_size:particle (px)"] != ""  # the spec has no pixel size
    assert float(rows[1][column]) == pytest.approx(
        (tifffile.imread(volume_pred.mask) == 1).mean(), abs=1e-6
    )
    batch = {r["quantity"]: r for r in csv.DictReader((out / "quantities-summary.csv").open())}
    fraction = batch["area_fraction:particle"]
    flagged = sum(r["flagged"] == "True" for r in rows)
    assert int(fraction["images"]) == 2 - flagged and int(fraction["flagged_left_out"]) == flagged
    # a slice of a volume is read and normalised like the same picture as a 2D file
    Image.fromarray(volume[0]).save(tmp_path / "slice0.png")
    (flat,) = predict_inputs(
        qc_run, [tmp_path / "slice0.png"], tmp_path / "s", options=PredictOptions(quality=False)
    ).predictions
    np.testing.assert_array_equal(
        np.asarray(Image.open(flat.mask)), tifffile.imread(volume_pred.mask)[0]
    )
    fused = predict_inputs(qc_run, [tmp_path / "vol.tif"], tmp_path / "fused",
                           options=PredictOptions(fuse_axes=True, quality=False))  # fmt: skip
    assert tifffile.imread(fused.predictions[0].mask).shape == volume.shape


def test_cli_predict_and_bad_input(qc_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    image = _images(qc_run)[0]
    res = runner.invoke(app, ["predict", str(image), "--run", str(qc_run), "--out",
                              str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (
        "1 inputs predicted" in res.output and (tmp_path / "o" / f"{image.stem}_mask.png").is_file()
    )
    assert "area_fraction:particle" in res.output and "unflagged inputs" in res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "missing.png"), "--run", str(qc_run),
                              "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 2 and "nothing there" in res.output


def test_export_onnx_and_smp_folder(qc_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import segmentation_models_pytorch as smp

    res = CliRunner().invoke(app, ["export", "--run", str(qc_run), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    diff = float(res.output.split("max |difference|")[1].split()[0])
    assert diff < 1e-3
    trained = load_trained(qc_run)
    reloaded = smp.from_pretrained(str(tmp_path / "m")).eval()
    x = torch.randn(2, trained.data.in_channels, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), trained.model(x))
    card = (tmp_path / "m" / "README.md").read_text()
    assert "macro IoU [95% CI]" in card and "| test |" in card and "synthetic-particles" in card
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(tmp_path / "m" / "model.onnx"))
    got = sess.run(None, {"image": x.numpy()})[0]  # dynamic batch and size
    np.testing.assert_allclose(got, trained.model(x).detach().numpy(), atol=1e-3)
