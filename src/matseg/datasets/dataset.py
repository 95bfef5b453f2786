"""The dataset the trainer sees: items split, tiled, decoded (with a cache) and normalised.

``MicrographDataset`` is a map-style dataset (``len`` / ``[i]``), so it plugs into a PyTorch
``DataLoader`` with ``collate_samples``. Decoding (file read, mask decode, crop, resize) is the
slow part and is cached on disk as ``.npy`` keyed by the file and every spec field that changes
the decoded arrays; normalisation and tiling run on the cached arrays, which are memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from matseg.atomic import write_npy
from matseg.datasets.discover import Item
from matseg.datasets.loading import ItemLoader, resize_pair
from matseg.datasets.readers import normalise, probe_shape
from matseg.datasets.spec import DatasetSpec
from matseg.datasets.tiling import Window, cut, tile_windows


@dataclass(frozen=True)
class SampleMeta:
    """Where a sample comes from, so every number can be traced back to a file and a pixel."""

    key: str
    source: str
    mask_source: str | None
    group: str
    split: str
    modality: str
    pixel_size_um: float | None
    window: tuple[int, int, int, int]  # y, x, h, w in the (cropped, resized) image
    index: int | None = None
    container: str | None = None


@dataclass(frozen=True)
class Sample:
    """Image (C, H, W) float32 normalised, mask (H, W) int64 class ids (or None), metadata."""

    image: np.ndarray
    mask: np.ndarray | None
    meta: SampleMeta


@dataclass(frozen=True)
class TileRef:
    """One sample to be: an item, the window cut from it, and its split."""

    item: Item
    window: Window
    split: str


def _decode_key(spec: DatasetSpec, item: Item) -> str:
    """Cache key: file identity (path, size, mtime) and every spec field that shapes the arrays."""
    parts: dict[str, Any] = {
        "spec": spec.model_dump(
            mode="json", include={"encoding", "reader", "crop", "tiling", "classes", "ignore_index"}
        ),
        "key": item.key,
    }
    for name, path in (("image", item.image), ("mask", item.mask)):
        if path is not None:
            st = path.stat()
            parts[name] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class DecodeCache:
    """Decoded arrays on disk (``<dir>/<key>.image.npy`` / ``.mask.npy``), read memory-mapped.

    Without a folder nothing is kept on disk (the cold path); either way the last ``recent``
    decoded items stay in memory, so the tiles of one large micrograph decode it once.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        folder: Path | None,
        recent: int = 2,
        loader: ItemLoader | None = None,
    ) -> None:
        self.spec = spec
        self.folder = folder
        self.loader = loader or ItemLoader(spec)
        self._recent: OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._recent_size = recent
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def get(self, item: Item) -> tuple[np.ndarray, np.ndarray | None]:
        """(image as stored dtype, mask) after crop and resize."""
        if item.key in self._recent:
            self._recent.move_to_end(item.key)
            return self._recent[item.key]
        arrays = self._load(item)
        if self._recent_size > 0:
            self._recent[item.key] = arrays
            while len(self._recent) > self._recent_size:
                self._recent.popitem(last=False)
        return arrays

    def _load(self, item: Item) -> tuple[np.ndarray, np.ndarray | None]:
        if self.folder is None:
            return self._decode(item)
        key = _decode_key(self.spec, item)
        img_path = self.folder / f"{key}.image.npy"
        mask_path = self.folder / f"{key}.mask.npy"
        none_path = self.folder / f"{key}.nomask"
        if img_path.exists() and (mask_path.exists() or none_path.exists()):
            try:
                image = np.load(img_path, mmap_mode="r")
                mask = np.load(mask_path, mmap_mode="r") if mask_path.exists() else None
                return image, mask
            except (ValueError, OSError, EOFError):
                pass  # a truncated or damaged cache file is a cache miss: decode again
        image, mask = self._decode(item)
        if mask is None:
            none_path.touch()
        else:
            small = (
                mask.astype(np.uint8)
                if mask.max(initial=0) < 256 and mask.min(initial=0) >= 0
                else mask
            )
            write_npy(mask_path, small)
        write_npy(img_path, image)
        return image, mask

    def _decode(self, item: Item) -> tuple[np.ndarray, np.ndarray | None]:
        decoded = self.loader.load(item)
        return resize_pair(decoded.image, decoded.mask, self.spec.tiling)


def prepared_shape(spec: DatasetSpec, item: Item, cache: DecodeCache) -> tuple[int, int]:
    """(H, W) after crop and resize, from the file header when no content-dependent crop is set."""
    if spec.crop.auto_info_band or spec.reader.kind in ("afm", "frames") or item.index is not None:
        image, _ = cache.get(item)
        return int(image.shape[-2]), int(image.shape[-1])
    shape = probe_shape(item.image)
    if spec.reader.kind == "stack":
        h, w = shape[-2], shape[-1]
    else:
        h, w = shape[0], shape[1]
    crop = spec.crop
    h, w = h - crop.top - crop.bottom, w - crop.left - crop.right
    t = spec.tiling
    factor = t.scale if t.resize == "scale" else (t.fit_size or max(h, w)) / max(h, w)
    if t.resize == "none" or factor == 1.0:
        return h, w
    return max(1, round(h * factor)), max(1, round(w * factor))


def plan_tiles(
    spec: DatasetSpec, splits: dict[str, list[Item]], cache: DecodeCache
) -> list[TileRef]:
    """Every (item, window, split) the dataset will serve, in a stable order."""
    refs: list[TileRef] = []
    patch, overlap = spec.tiling.patch_size, spec.tiling.overlap
    for split in sorted(splits):
        for item in splits[split]:
            if patch is None:
                refs.append(TileRef(item, Window(0, 0, -1, -1), split))
                continue
            h, w = prepared_shape(spec, item, cache)
            refs.extend(TileRef(item, win, split) for win in tile_windows(h, w, patch, overlap))
    return refs


class MicrographDataset:
    """Map-style dataset over tile references; index -> ``Sample``; ``plot(i)`` shows one.

    ``classes``: the class names (the spec's, or those the inspection named), for legends.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        refs: list[TileRef],
        cache: DecodeCache,
        classes: list[str] | None = None,
    ) -> None:
        self.spec = spec
        self.refs = refs
        self.cache = cache
        self.classes = classes or list(spec.classes or [])

    def __repr__(self) -> str:
        splits = {r.split for r in self.refs}
        return (
            f"MicrographDataset({self.spec.name!r}: {len(self)} samples, splits "
            f"{sorted(splits)}, classes {self.classes})"
        )

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Sample:
        ref = self.refs[index]
        image, mask = self.cache.get(ref.item)
        win = ref.window
        if win.h < 0:
            win = Window(0, 0, int(image.shape[-2]), int(image.shape[-1]))
        tile, tile_mask = cut(
            np.asarray(image),
            None if mask is None else np.asarray(mask),
            win,
            self.spec.ignore_index,
        )
        item = ref.item
        meta = SampleMeta(
            key=item.key,
            source=str(item.image),
            mask_source=None if item.mask is None else str(item.mask),
            group=item.group,
            split=ref.split,
            modality=str(self.spec.modality),
            pixel_size_um=self.spec.pixel_size_um,
            window=(win.y, win.x, win.h, win.w),
            index=item.index,
            container=item.container,
        )
        out_mask = None if tile_mask is None else tile_mask.astype(np.int64)
        return Sample(normalise(tile, self.spec.normalise), out_mask, meta)

    def split(self, name: str) -> MicrographDataset:
        """The subset of one split (same cache)."""
        refs = [r for r in self.refs if r.split == name]
        return MicrographDataset(self.spec, refs, self.cache, self.classes)

    def subset(self, keys: Collection[str], split: str) -> MicrographDataset:
        """The samples of the images named by ``keys`` (same cache), served as ``split`` (a
        cross-validation fold's parts are cut from the train and val splits this way)."""
        wanted = set(keys)
        refs = [replace(r, split=split) for r in self.refs if r.item.key in wanted]
        return MicrographDataset(self.spec, refs, self.cache, self.classes)

    def plot(self, index: int) -> Any:
        """Image, mask in class colours with a legend, and their overlay, as a matplotlib
        figure (shown inline in a notebook; ``fig.savefig(path)`` to keep it)."""
        from matseg.plots import sample_figure

        sample = self[index]
        names = self.classes or [str(c) for c in range(int(_max_class(sample)) + 1)]
        title = f"{sample.meta.key} ({sample.meta.split})"
        return sample_figure(sample.image, sample.mask, names, self.spec.ignore_index, title)


def _max_class(sample: Sample) -> int:
    if sample.mask is None:
        return 0
    valid = sample.mask[sample.mask < 255]
    return int(valid.max()) if valid.size else 0


def collate_samples(samples: list[Sample]) -> dict[str, Any]:
    """Batch samples for a DataLoader: stacked tensors plus the metadata list."""
    import torch  # imported here so dataset inspection does not pay torch's import time

    batch: dict[str, Any] = {
        "image": torch.from_numpy(np.stack([s.image for s in samples])),
        "meta": [s.meta for s in samples],
    }
    if all(s.mask is not None for s in samples):
        batch["mask"] = torch.from_numpy(np.stack([s.mask for s in samples]))  # type: ignore[misc]
    return batch
