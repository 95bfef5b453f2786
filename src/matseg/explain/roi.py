"""The image to explain and the expert's region of interest A, aligned pixel for pixel.

The image is read the way the run's dataset spec reads its own (reader, crop, resize,
normalisation), so the model sees what it saw in training. The region comes as:

- nothing: the whole image;
- a box ``y0,x0,y1,x1`` (pixels of the prepared image, end exclusive);
- a mask image (any non-zero pixel is in A) at the raw image's size (cropped and resized like
  the image) or at the prepared size;
- polygon JSON, COCO or VIA 2.x as the dataset layer reads them, the polygons drawn for the
  image's file name at the raw size, then cropped and resized like the image.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matseg.datasets.discover import expand_file
from matseg.datasets.loading import ItemLoader, resize_pair
from matseg.datasets.masks import rasterise, read_coco, read_via
from matseg.datasets.readers import normalise, read_array
from matseg.datasets.spec import DatasetSpec
from matseg.errors import DataError

_BOX = re.compile(r"^\s*(?:box:)?\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$")


@dataclass
class ExplainInput:
    """The prepared image (C, H, W), normalised unless read with ``normalised=False`` (then the
    cropped, resized pixels in their own dtype), and how it was cut from the file."""

    path: Path
    image: np.ndarray
    raw_shape: tuple[int, int]
    crop: tuple[int, int, int, int]  # top, bottom, left, right rows / columns removed


def read_image(spec: DatasetSpec, path: Path, normalised: bool = True) -> ExplainInput:
    """One image file read, cropped, resized and (by default) normalised by the run's spec."""
    if not path.is_file():
        raise DataError(str(path), "an image file", "nothing there")
    unlabelled = spec.model_copy(update={"masks": None, "encoding": None})
    items = expand_file(path, None, unlabelled, "")
    if len(items) != 1:
        raise DataError(str(path), "one 2D image", f"{len(items)} slices or frames", "save one")
    decoded = ItemLoader(unlabelled).load(items[0])
    image, _ = resize_pair(decoded.image, None, spec.tiling)
    crop = spec.crop
    bottom = max(crop.bottom, decoded.info_band_rows)
    h, w = decoded.image.shape[-2:]  # the file's size is the cropped size plus what was cut
    return ExplainInput(
        path,
        normalise(image, spec.normalise) if normalised else image,
        (int(h) + crop.top + bottom, int(w) + crop.left + crop.right),
        (crop.top, bottom, crop.left, crop.right),
    )


def _from_raw(mask: np.ndarray, target: ExplainInput, spec: DatasetSpec) -> np.ndarray:
    """A raw-size region cropped and resized like the image."""
    top, bottom, left, right = target.crop
    h, w = target.raw_shape
    cut = mask[top : h - bottom, left : w - right]
    dummy = np.zeros((1, *cut.shape), dtype=np.float32)
    _, resized = resize_pair(dummy, cut.astype(np.int64), spec.tiling)
    assert resized is not None
    return resized > 0


def _polygons(path: Path, name: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(str(path), "a COCO or VIA polygon JSON file", str(exc)) from exc
    index = (
        read_coco([path], None)
        if isinstance(data, dict) and "annotations" in data
        else read_via([(path, 1)])
    )
    polygons = index.polygons.get(name)
    if not polygons:
        found = ", ".join(sorted(index.names())[:5]) or "no images"
        raise DataError(str(path), f"polygons for {name}", found)
    return rasterise(polygons, shape) > 0


def region_of_interest(roi: str | None, target: ExplainInput, spec: DatasetSpec) -> np.ndarray:
    """The (H, W) boolean region A on the prepared image."""
    h, w = target.image.shape[-2:]
    if roi is None:
        return np.ones((h, w), dtype=bool)
    box = _BOX.match(roi)
    if box:
        y0, x0, y1, x1 = (int(v) for v in box.groups())
        if y1 <= y0 or x1 <= x0:
            raise DataError(
                f"--roi {roi}",
                "a box with y0 < y1 and x0 < x1",
                f"height {y1 - y0}, width {x1 - x0}",
            )
        if not (y0 >= 0 and y1 <= h and x0 >= 0 and x1 <= w):
            raise DataError(f"--roi {roi}", f"y0,x0,y1,x1 inside the {h}x{w} image", roi)
        region = np.zeros((h, w), dtype=bool)
        region[y0:y1, x0:x1] = True
        return region
    path = Path(roi).expanduser()
    if not path.is_file():
        raise DataError(f"--roi {roi}", "a mask image, a polygon JSON or y0,x0,y1,x1", "neither")
    if path.suffix.lower() == ".json":
        region = _from_raw(_polygons(path, target.path.name, target.raw_shape), target, spec)
    else:
        raw = read_array(path)
        mask = raw.any(axis=-1) if raw.ndim == 3 else raw != 0
        if mask.shape == (h, w):
            region = mask.astype(bool)
        elif mask.shape == target.raw_shape:
            region = _from_raw(mask, target, spec)
        else:
            raise DataError(
                str(path),
                f"a mask of {target.raw_shape} (file) or {(h, w)} (prepared)",
                str(mask.shape),
            )
    if not region.any():
        raise DataError(str(path), "at least one pixel in the region", "an empty region")
    return region
