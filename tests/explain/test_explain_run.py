"""Explaining an image of a run: regions of interest, faithfulness, files, command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from matseg.cli import app
from matseg.datasets.spec import spec_from_dict
from matseg.errors import DataError
from matseg.explain.faithfulness import faithfulness
from matseg.explain.heatmap import counterfactual_heatmap
from matseg.explain.roi import read_image, region_of_interest
from matseg.explain.run import ExplainOptions, explain_image


@pytest.fixture(scope="module")
def run(tiny_run: Path) -> Path:
    return tiny_run


def _spec(tmp_path: Path, **crop: int):
    return spec_from_dict({"name": "t", "root": str(tmp_path), "crop": crop, "masks": None})


def _image(tmp_path: Path, shape=(40, 50)) -> Path:
    path = tmp_path / "micrograph.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def test_regions_from_box_mask_and_polygons(tmp_path: Path) -> None:
    spec = _spec(tmp_path, top=4, left=2)  # the model sees the image without 4 rows, 2 columns
    target = read_image(spec, _image(tmp_path))
    assert target.image.shape == (1, 36, 48) and target.raw_shape == (40, 50)
    assert region_of_interest(None, target, spec).all()
    box = region_of_interest("2,3,10,12", target, spec)
    assert box.sum() == 8 * 9 and box[2, 3] and not box[10, 12]
    raw = np.zeros((40, 50), np.uint8)
    raw[10:20, 10:30] = 255  # raw coordinates: cropped like the image
    Image.fromarray(raw).save(tmp_path / "roi.png")
    mask = region_of_interest(str(tmp_path / "roi.png"), target, spec)
    assert mask.sum() == 200 and mask[6, 8] and not mask[5, 8]
    coco = {
        "images": [{"id": 1, "file_name": "micrograph.png", "height": 40, "width": 50}],
        "annotations": [{"image_id": 1, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]}],
    }
    (tmp_path / "roi.json").write_text(json.dumps(coco))
    poly = region_of_interest(str(tmp_path / "roi.json"), target, spec)
    assert poly[6:16, 8:28].all() and poly.sum() <= 11 * 21
    via = {"x": {"filename": "micrograph.png", "regions": [{"shape_attributes": {
        "name": "rect", "x": 10, "y": 10, "width": 20, "height": 10}}]}}  # fmt: skip
    (tmp_path / "via.json").write_text(json.dumps(via))
    assert (region_of_interest(str(tmp_path / "via.json"), target, spec) == poly).all()
    with pytest.raises(DataError, match="inside the 36x48 image"):
        region_of_interest("0,0,99,5", target, spec)
    with pytest.raises(DataError, match="neither"):
        region_of_interest(str(tmp_path / "missing.png"), target, spec)
    coco["images"][0]["file_name"] = "other.png"
    (tmp_path / "other.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"polygons for micrograph\.png"):
        region_of_interest(str(tmp_path / "other.json"), target, spec)


def test_a_faithful_map_beats_a_shuffled_one() -> None:
    """The model's own H degrades A more than the same values placed at random."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5, padding=2), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 2, 5, padding=2)).eval()  # fmt: skip
    image = np.random.default_rng(0).normal(size=(1, 64, 64)).astype(np.float32)
    roi = np.zeros((64, 64), bool)
    roi[24:40, 24:40] = True
    heat = counterfactual_heatmap(net, image, roi, window=8, stride=8).image_map
    real = faithfulness(net, image, roi, heat, cell=8)
    shuffled = np.random.default_rng(1).permutation(heat.ravel()).reshape(heat.shape)
    fake = faithfulness(net, image, roi, shuffled, cell=8)
    assert real.auc_ratio > 3 and real.auc_ratio > 2 * fake.auc_ratio
    assert all(t >= lo for t, lo in zip(real.top, real.low, strict=True))


def test_explain_image_writes_its_files(run: Path, tmp_path: Path) -> None:
    image = next((run.parent.parent / "data" / "images").glob("*.png"))
    options = ExplainOptions(window=8, stride=8)
    result = explain_image(run, image, "8,8,40,40", options=options, out=tmp_path / "x")
    folder = Path(result["folder"])
    heat = np.load(folder / "heatmap.npy")
    assert heat.shape == (64, 64) and heat.max() > 0
    assert np.load(folder / "window_scores.npy").shape == (8, 8)
    assert (folder / "explain.png").stat().st_size > 2000
    saved = json.loads((folder / "explain.json").read_text())
    assert saved["windows"] == 64 and saved["faithfulness"]["auc_ratio"] > 0
    assert 0 < saved["concentration"]["roi_share"] <= 1


def test_cli_explain(run: Path, tmp_path: Path) -> None:
    image = next((run.parent.parent / "data" / "images").glob("*.png"))
    runner = CliRunner()
    args = ["explain", "--run", str(run), "--image", str(image), "--window", "16", "--stride",
            "16", "--no-faithful", "--out", str(tmp_path)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "16 windows run" in res.output and (tmp_path / "explain.png").is_file()
    two = sorted((run.parent.parent / "data" / "images").glob("*.png"))[:2]
    many = runner.invoke(app, [*args[:3], "--image", str(two[0]), "--image", str(two[1]),
                               "--window", "16", "--stride", "16", "--no-faithful", "--compile",
                               "off", "--out", str(tmp_path / "many"), "--json"])  # fmt: skip
    assert many.exit_code == 0, many.output
    listed = json.loads(many.output)
    assert [Path(r["image"]).name for r in listed] == [two[0].name, two[1].name]
    for path in two:
        assert (tmp_path / "many" / path.stem / "heatmap.npy").is_file()
    assert not listed[0]["compiled"]
    bad = runner.invoke(app, ["explain", "--run", str(run), "--image", str(image), "--kernel",
                              "sharpen", "--out", str(tmp_path)])  # fmt: skip
    assert bad.exit_code == 2 and "kernel" in bad.output
