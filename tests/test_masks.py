"""Mask decoders: every encoding gives the class ids a materials scientist meant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from matseg.datasets.masks import MaskInput, Polygon, decode_mask, rasterise, read_coco, read_via
from matseg.datasets.spec import (
    ColourEncoding,
    IndexEncoding,
    InstanceEncoding,
    ThresholdEncoding,
)
from matseg.errors import DataError


def test_index_with_value_table_and_ignore() -> None:
    raw = np.array([[0, 255], [128, 0]], dtype=np.uint8)
    enc = IndexEncoding(values={0: 0, 255: 1}, ignore_values=[128])
    out = decode_mask(enc, MaskInput("m", raw=raw), ignore_index=255)
    np.testing.assert_array_equal(out, [[0, 1], [255, 0]])
    with pytest.raises(DataError, match="values"):
        decode_mask(IndexEncoding(values={0: 0}), MaskInput("m", raw=raw))


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 65535)])
def test_colour_overlay_8_and_16_bit(dtype: type, top: int) -> None:
    grey = np.full((4, 4, 4), top // 2, dtype=dtype)  # micrograph showing through
    grey[..., 3] = top
    grey[0, 0, :3] = (top, 0, 0)
    grey[1, 1, :3] = (0, 0, top)
    enc = ColourEncoding.model_validate(
        {"colours": [{"rgb": [255, 0, 0], "class_id": 1}, {"rgb": [0, 0, 255], "class_id": 2}]}
    )
    out = decode_mask(enc, MaskInput("overlay", raw=grey))
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0], expected[1, 1] = 1, 2
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("polarity,expected", [("bright", [[0, 1, 1]]), ("dark", [[1, 0, 0]])])
def test_threshold_polarity(polarity: str, expected: list[list[int]]) -> None:
    raw = np.array([[10, 128, 250]], dtype=np.uint8)
    enc = ThresholdEncoding(threshold=128, polarity=polarity)  # type: ignore[arg-type]
    np.testing.assert_array_equal(decode_mask(enc, MaskInput("t", raw=raw)), expected)


def test_instances_to_binary_boundary_semantic() -> None:
    ids = np.zeros((6, 6), dtype=np.uint16)
    ids[:, :3] = 7
    ids[:, 3:] = 300
    binary = decode_mask(InstanceEncoding(to="binary"), MaskInput("i", raw=ids))
    assert binary.min() == 1
    boundary = decode_mask(InstanceEncoding(to="boundary"), MaskInput("i", raw=ids))
    assert boundary[:, 2].all() and boundary[:, 3].all() and not boundary[:, 0].any()
    semantic = decode_mask(
        InstanceEncoding(to="semantic", instance_classes={7: 1, 300: 2}), MaskInput("i", raw=ids)
    )
    assert set(np.unique(semantic)) == {1, 2}
    with pytest.raises(DataError, match="unmapped"):
        decode_mask(
            InstanceEncoding(to="semantic", instance_classes={7: 1}), MaskInput("i", raw=ids)
        )


def test_rasterise_square() -> None:
    mask = rasterise([Polygon((2.0, 6.0, 6.0, 2.0), (1.0, 1.0, 4.0, 4.0), 3)], (8, 8))
    assert mask[2, 4] == 3 and mask[0, 0] == 0
    assert set(np.unique(mask)) == {0, 3}


def test_coco_and_via_parsing(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "./data/train/a b.png", "height": 10, "width": 10}],
        "annotations": [
            {"image_id": 1, "category_id": 0, "segmentation": [[1, 1, 8, 1, 8, 8, 1, 8]]}
        ],
        "categories": [{"id": 0, "name": "melt pool"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    idx = read_coco([tmp_path / "c.json"], {0: 1})
    assert idx.sizes["a b.png"] == (10, 10)
    assert rasterise(idx.polygons["a b.png"], (10, 10)).sum() > 30
    via = {
        "_via_img_metadata": {
            "a.png123": {
                "filename": "a.png",
                "regions": [
                    {
                        "shape_attributes": {
                            "name": "polygon",
                            "all_points_x": [0, 4, 4],
                            "all_points_y": [0, 0, 4],
                        }
                    },
                    {"shape_attributes": {"name": "rect", "x": 5, "y": 5, "width": 2, "height": 2}},
                ],
            }
        }
    }
    (tmp_path / "v.json").write_text(json.dumps(via))
    vidx = read_via([(tmp_path / "v.json", 2)])
    assert [p.class_id for p in vidx.polygons["a.png"]] == [2, 2]
    rle = dict(
        coco, annotations=[{"image_id": 1, "category_id": 0, "segmentation": {"counts": "x"}}]
    )
    (tmp_path / "rle.json").write_text(json.dumps(rle))
    with pytest.raises(DataError, match="RLE"):
        read_coco([tmp_path / "rle.json"], None)
