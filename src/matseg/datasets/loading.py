"""Loading one item: read the image, decode its mask, crop, check, resize.

``ItemLoader`` holds what is read once per dataset (the polygon annotations, the volume being
sliced) so nothing lives in module globals. Every check raises a one-line ``DataError`` naming
the file, so ``datasets check`` can collect them and a training run stops with a clear reason.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.transform import resize as sk_resize

from matseg.datasets.discover import Item
from matseg.datasets.masks import MaskInput, PolygonIndex, decode_mask, load_polygon_index
from matseg.datasets.readers import (
    check_finite,
    detect_info_band,
    read_array,
    to_channels_first,
)
from matseg.datasets.spec import POLYGON_ENCODINGS, DatasetSpec, IndexEncoding, Tiling
from matseg.errors import DataError


@dataclass(frozen=True)
class Decoded:
    """One item as stored (image dtype untouched), cropped, with its class-id mask if any."""

    image: np.ndarray  # (C, H, W)
    mask: np.ndarray | None  # (H, W) int64
    info_band_rows: int = 0


class ItemLoader:
    """Reads the items of one dataset spec."""

    def __init__(
        self, spec: DatasetSpec, polygons: PolygonIndex | None = None, volume_cache_size: int = 2
    ) -> None:
        self.spec = spec
        self.encoding = spec.encoding or IndexEncoding()
        self.polygons = polygons
        if self.polygons is None and self.encoding.type in POLYGON_ENCODINGS:
            self.polygons = load_polygon_index(self.encoding, spec.resolve)
        self._volumes: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._volume_cache_size = volume_cache_size

    # -- reading ---------------------------------------------------------------------------------

    def _volume(self, path: Path) -> np.ndarray:
        if path in self._volumes:
            self._volumes.move_to_end(path)
            return self._volumes[path]
        vol = read_array(path)
        if vol.ndim != 3:
            raise DataError(
                str(path), "a 3D volume (Z, Y, X)", f"shape {vol.shape}", "reader.kind?"
            )
        self._volumes[path] = vol
        while len(self._volumes) > self._volume_cache_size:
            self._volumes.popitem(last=False)
        return vol

    def _slice(self, path: Path, index: int) -> np.ndarray:
        return np.take(self._volume(path), index, axis=self.spec.reader.axis)

    def read_image(self, item: Item) -> np.ndarray:
        """The item's image as (C, H, W) in its stored dtype."""
        kind = self.spec.reader.kind
        where = item.key if item.index is not None else str(item.image)
        if kind == "volume":
            image = self._slice(item.image, int(item.index or 0))[None]
        elif kind == "afm":
            from matseg.datasets.afm import read_afm  # optional extra: imported on use only

            image = read_afm(item.image, self.spec.reader.channels).data
        else:
            image = to_channels_first(read_array(item.image), where, stack=kind == "stack")
            names = self.spec.reader.channels
            if kind == "stack" and names is not None and len(names) != image.shape[0]:
                raise DataError(
                    where, f"{len(names)} channels ({', '.join(names)})", f"{image.shape[0]}"
                )
        check_finite(image, where)
        return image

    def read_mask(self, item: Item, shape: tuple[int, int]) -> np.ndarray | None:
        """The item's class-id mask, or None for unlabeled data."""
        if self.polygons is not None:
            name = item.image.name
            if name not in self.polygons.names():
                raise DataError(
                    str(item.image), "polygons for this image", "none in the annotations"
                )
            declared = self.polygons.sizes.get(name)
            if declared is not None and declared != shape:
                raise DataError(
                    str(item.image),
                    f"the size the annotations declare {declared}",
                    f"image size {shape}",
                    "the annotation file belongs to other images",
                )
            inp = MaskInput(
                str(item.image), polygons=self.polygons.polygons.get(name, []), shape=shape
            )
            return decode_mask(self.encoding, inp, self.spec.ignore_index)
        if item.mask is None:
            return None
        if self.spec.reader.kind == "volume":
            raw = self._slice(item.mask, int(item.index or 0))
            where = f"{item.mask}#{item.index}"
        else:
            raw = read_array(item.mask)
            where = str(item.mask)
        check_finite(raw, where)
        return decode_mask(self.encoding, MaskInput(where, raw=raw), self.spec.ignore_index)

    def load(self, item: Item) -> Decoded:
        """Read, decode, check and crop one item."""
        image = self.read_image(item)
        mask = self.read_mask(item, (image.shape[1], image.shape[2]))
        if mask is not None:
            if mask.shape != image.shape[1:]:
                raise DataError(
                    str(item.mask or item.image),
                    f"a mask of the image's size {image.shape[1:]}",
                    f"size {mask.shape}",
                    "image and mask must be pixel-aligned",
                )
            self._check_classes(item, mask)
        return self._crop(image, mask)

    def _check_classes(self, item: Item, mask: np.ndarray) -> None:
        classes = self.spec.classes
        if classes is None:
            return
        values = np.unique(mask)
        bad = [
            int(v) for v in values if (v < 0 or v >= len(classes)) and v != self.spec.ignore_index
        ]
        if bad:
            raise DataError(
                str(item.mask or item.image),
                f"class ids 0..{len(classes) - 1} ({', '.join(classes)})",
                f"values {bad[:8]}",
                "fix 'classes' or the encoding's value table",
            )

    def _crop(self, image: np.ndarray, mask: np.ndarray | None) -> Decoded:
        crop = self.spec.crop
        band = detect_info_band(image) if crop.auto_info_band else 0
        top, left = crop.top, crop.left
        bottom = max(crop.bottom, band)
        h, w = image.shape[1:]
        if top + bottom >= h or left + crop.right >= w:
            raise DataError(
                self.spec.name, f"a crop smaller than the image {h}x{w}", "too much cut"
            )
        ys, xs = slice(top, h - bottom), slice(left, w - crop.right)
        cut_mask = None if mask is None else mask[ys, xs]
        return Decoded(image[:, ys, xs], cut_mask, band)


def resize_pair(
    image: np.ndarray, mask: np.ndarray | None, tiling: Tiling
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply the spec's resize policy: images bilinear (anti-aliased), masks nearest."""
    h, w = image.shape[1:]
    if tiling.resize == "none":
        return image, mask
    factor = (
        tiling.scale if tiling.resize == "scale" else (tiling.fit_size or max(h, w)) / max(h, w)
    )
    if factor == 1.0:
        return image, mask
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    out = sk_resize(
        image.astype(np.float32),
        (image.shape[0], *size),
        order=1,
        anti_aliasing=factor < 1,
        preserve_range=True,
    ).astype(image.dtype if np.issubdtype(image.dtype, np.floating) else np.float32)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    if mask is None:
        return out, None
    m = sk_resize(mask, size, order=0, anti_aliasing=False, preserve_range=True).astype(np.int64)
    return out, m
