"""Mask decoders: every stored mask encoding -> one (H, W) int64 array of class ids.

One registry, ``DECODERS``, maps an encoding ``type`` to a function. Raster encodings take the
mask array as stored; polygon encodings (COCO, VIA) take the polygons of one image from a
``PolygonIndex`` built once per dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.draw import polygon as fill_polygon
from skimage.segmentation import find_boundaries

from matseg.datasets.spec import (
    CocoEncoding,
    ColourEncoding,
    IndexEncoding,
    InstanceEncoding,
    MaskEncoding,
    ThresholdEncoding,
    ViaEncoding,
)
from matseg.errors import DataError, read_json

# --- polygons -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Polygon:
    """One polygon in pixel coordinates (x right, y down) and the class it paints."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]
    class_id: int


@dataclass
class PolygonIndex:
    """Polygons per image base name, read from COCO / VIA files once per dataset."""

    polygons: dict[str, list[Polygon]] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (H, W) if declared

    def add(self, name: str, poly: Polygon) -> None:
        self.polygons.setdefault(name, []).append(poly)

    def names(self) -> set[str]:
        return set(self.polygons) | set(self.sizes)


def _load_json(path: Path) -> object:
    return read_json(path, "an annotation JSON file", hint="check the spec")


def read_coco(paths: list[Path], categories: dict[int, int] | None) -> PolygonIndex:
    """COCO JSON -> polygons per image base name (``file_name`` paths are reduced to base names)."""
    index = PolygonIndex()
    for path in paths:
        data = _load_json(path)
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DataError(str(path), "COCO JSON with 'images' and 'annotations'", "other JSON")
        names = {}
        for img in data["images"]:
            name = Path(str(img["file_name"]).replace("\\", "/")).name
            names[img["id"]] = name
            index.sizes[name] = (int(img["height"]), int(img["width"]))
        for ann in data["annotations"]:
            name = names.get(ann["image_id"])
            if name is None:
                raise DataError(
                    str(path), "annotations of listed images", f"image_id {ann['image_id']}"
                )
            cat = int(ann.get("category_id", 1))
            class_id = categories.get(cat) if categories is not None else 1
            if class_id is None:
                continue  # category deliberately not mapped by the spec
            seg = ann.get("segmentation")
            if not isinstance(seg, list):
                raise DataError(
                    str(path),
                    "polygon segmentations",
                    f"RLE for annotation {ann.get('id')}",
                    "convert RLE to instance-id masks and use the 'instance' encoding",
                )
            for ring in seg:
                pts = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
                index.add(name, Polygon(tuple(pts[:, 0]), tuple(pts[:, 1]), class_id))
    return index


def read_via(sources: list[tuple[Path, int]]) -> PolygonIndex:
    """VIA 2.x project JSON -> polygons per image file name; each source paints one class."""
    index = PolygonIndex()
    for path, class_id in sources:
        data = _load_json(path)
        meta = data.get("_via_img_metadata", data) if isinstance(data, dict) else None
        if not isinstance(meta, dict):
            raise DataError(str(path), "a VIA 2.x project or region JSON", type(data).__name__)
        for entry in meta.values():
            name = str(entry["filename"])
            index.polygons.setdefault(name, [])
            for region in entry.get("regions", []):
                shape = region["shape_attributes"]
                kind = shape.get("name")
                if kind in ("polygon", "polyline"):
                    xs, ys = shape["all_points_x"], shape["all_points_y"]
                elif kind == "rect":
                    x, y, w, h = (shape[k] for k in ("x", "y", "width", "height"))
                    xs, ys = [x, x + w, x + w, x], [y, y, y + h, y + h]
                else:
                    raise DataError(
                        str(path), "polygon or rect regions", f"a '{kind}' region in {name}"
                    )
                index.add(name, Polygon(tuple(map(float, xs)), tuple(map(float, ys)), class_id))
    return index


def rasterise(polys: list[Polygon], shape: tuple[int, int]) -> np.ndarray:
    """Fill polygons into a class-id image; later polygons paint over earlier ones."""
    mask = np.zeros(shape, dtype=np.int64)
    for poly in polys:
        rr, cc = fill_polygon(np.asarray(poly.ys), np.asarray(poly.xs), shape=shape)
        mask[rr, cc] = poly.class_id
    return mask


# --- raster decoders ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskInput:
    """What a decoder gets: the stored mask array, or the polygons and the image shape."""

    where: str
    raw: np.ndarray | None = None
    polygons: list[Polygon] | None = None
    shape: tuple[int, int] | None = None


def _grey(raw: np.ndarray, where: str) -> np.ndarray:
    if raw.ndim == 2:
        return raw
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):
        rgb = raw[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0]
    raise DataError(
        where, "a single-channel mask", f"shape {raw.shape}", "use the 'colour' encoding"
    )


def decode_index(enc: IndexEncoding, inp: MaskInput, ignore_index: int) -> np.ndarray:
    """Pixels are class ids, or go through the spec's value -> class table."""
    grey = _grey(_need_raw(inp), inp.where)
    if np.issubdtype(grey.dtype, np.floating) and not np.all(np.mod(grey, 1) == 0):
        raise DataError(inp.where, "integer class ids", "fractional mask values", "use 'threshold'")
    out = grey.astype(np.int64)
    if enc.values is not None:
        table = np.full(out.shape, -1, dtype=np.int64)
        for value, cls in enc.values.items():
            table[out == value] = cls
        unmapped = table < 0
        for value in enc.ignore_values:
            table[out == value] = ignore_index
            unmapped &= out != value
        if unmapped.any():
            vals = np.unique(out[unmapped])[:8].tolist()
            share, listed = float(unmapped.mean()), ", ".join(map(str, sorted(enc.values)))
            raise DataError(
                inp.where,
                f"only the values the encoding's table lists ({listed})",
                f"value(s) {', '.join(map(str, vals))} on {share:.1%} of the pixels",
                "add them to the encoding's 'values' (or 'ignore_values')",
            )
        return table
    for value in enc.ignore_values:
        out[grey == value] = ignore_index
    return out


def decode_colour(enc: ColourEncoding, inp: MaskInput, ignore_index: int) -> np.ndarray:
    """Colour overlays: listed colours -> classes, everything else -> the default class."""
    raw = _need_raw(inp)
    if raw.ndim != 3 or raw.shape[-1] not in (3, 4):
        raise DataError(
            inp.where, "an RGB or RGBA colour mask", f"shape {raw.shape}", "use 'index'"
        )
    rgb = raw[..., :3]
    if rgb.dtype == np.uint16:
        rgb = (rgb.astype(np.uint32) * 255 + 32767) // 65535  # 16-bit overlays -> 8-bit levels
    elif rgb.dtype != np.uint8:
        raise DataError(inp.where, "8- or 16-bit colour mask", f"dtype {rgb.dtype}")
    rgb = rgb.astype(np.int32)
    out = np.full(rgb.shape[:2], enc.default_class, dtype=np.int64)
    listed = np.zeros(rgb.shape[:2], dtype=bool)
    for colour in enc.colours:
        hit = np.all(np.abs(rgb - np.asarray(colour.rgb)) <= enc.tolerance, axis=-1)
        out[hit] = colour.class_id
        listed |= hit
    _refuse_unlisted_colours(rgb, listed, inp.where)
    return out


UNLISTED_TRACE = 0.001  # an unlisted colour on more than 0.1% of a mask's pixels is reported
CHROMA = 16  # max - min channel above this: a colour, not the grey micrograph under an overlay


def _refuse_unlisted_colours(rgb: np.ndarray, listed: np.ndarray, where: str) -> None:
    """An overlay's unlisted pixels become the default class: right for the grey micrograph
    beneath it, silently wrong for a colour the table forgot (green particles read as matrix).
    Colours not in the table that cover more than a trace of the mask are an error."""
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    odd = ~listed & (chroma > CHROMA)
    if odd.mean() <= UNLISTED_TRACE:
        return
    colours, counts = np.unique(rgb[odd], axis=0, return_counts=True)
    order = np.argsort(-counts)[:3]
    found = ", ".join(
        f"rgb {tuple(int(c) for c in colours[i])} on {counts[i] / odd.size:.1%}" for i in order
    )
    raise DataError(
        where,
        "only the table's colours (and the grey micrograph) in a colour overlay",
        f"unlisted colours: {found} of the pixels",
        "add each to 'colours' with the class it marks (class_id = default_class keeps it so)",
    )


def decode_threshold(enc: ThresholdEncoding, inp: MaskInput, ignore_index: int) -> np.ndarray:
    """Anti-aliased strokes or soft masks -> binary by a threshold and a polarity."""
    grey = _grey(_need_raw(inp), inp.where).astype(np.float64)
    fg = grey >= enc.threshold if enc.polarity == "bright" else grey < enc.threshold
    return fg.astype(np.int64)


def decode_instance(enc: InstanceEncoding, inp: MaskInput, ignore_index: int) -> np.ndarray:
    """Instance-id images -> binary (object / background), boundaries, or semantic classes."""
    ids = _grey(_need_raw(inp), inp.where).astype(np.int64)
    if enc.to == "binary":
        return (ids != enc.background).astype(np.int64)
    if enc.to == "boundary":
        return find_boundaries(ids, mode="inner", background=enc.background).astype(np.int64)
    table = enc.instance_classes or {}
    out = np.zeros(ids.shape, dtype=np.int64)
    present = set(np.unique(ids).tolist()) - {enc.background}
    missing = sorted(present - set(table))
    if missing:
        raise DataError(inp.where, "a class for every instance id", f"ids {missing[:8]} unmapped")
    for inst, cls in table.items():
        out[ids == inst] = cls
    return out


def decode_polygons(
    enc: CocoEncoding | ViaEncoding, inp: MaskInput, ignore_index: int
) -> np.ndarray:
    """Polygons of one image rasterised at the image's size."""
    if inp.shape is None:
        raise DataError(inp.where, "the image shape for rasterising", "none")
    return rasterise(inp.polygons or [], inp.shape)


def _need_raw(inp: MaskInput) -> np.ndarray:
    if inp.raw is None:
        raise DataError(inp.where, "a mask file", "no mask", "pair a mask with the image")
    return inp.raw


Decoder = Callable[..., np.ndarray]
DECODERS: dict[str, Decoder] = {
    "index": decode_index,
    "colour": decode_colour,
    "threshold": decode_threshold,
    "instance": decode_instance,
    "coco": decode_polygons,
    "via": decode_polygons,
}


def decode_mask(encoding: MaskEncoding, inp: MaskInput, ignore_index: int = 255) -> np.ndarray:
    """Decode one mask through the registry."""
    return DECODERS[encoding.type](encoding, inp, ignore_index)


def load_polygon_index(encoding: MaskEncoding, resolve: Callable[[str], Path]) -> PolygonIndex:
    """Read the annotation files a polygon encoding names (paths resolved by the spec)."""
    if isinstance(encoding, CocoEncoding):
        return read_coco([resolve(p) for p in encoding.annotations], encoding.categories)
    if isinstance(encoding, ViaEncoding):
        return read_via([(resolve(s.file), s.class_id) for s in encoding.sources])
    raise TypeError(f"{encoding.type} is not a polygon encoding")
