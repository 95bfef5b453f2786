"""Checking a dataset: read every item once, list every problem, summarise, fingerprint.

``inspect_dataset`` is what ``matseg datasets check`` and the demo run. It never stops at the
first bad file: every problem is collected with the file it concerns, and the dataset is
*usable* only when pairs were found and no problem is an error.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from matseg.datasets.dataset import DecodeCache, MicrographDataset, plan_tiles
from matseg.datasets.discover import Discovery, Item, Problem, discover
from matseg.datasets.infer import infer_encoding
from matseg.datasets.loading import ItemLoader
from matseg.datasets.readers import normalise
from matseg.datasets.spec import POLYGON_ENCODINGS, DatasetSpec
from matseg.datasets.splits import (
    Duplicate,
    SplitResult,
    assign_splits,
    find_leaks,
    perceptual_hash,
)
from matseg.datasets.tiling import tile_windows
from matseg.errors import MatsegError


@dataclass
class ItemStats:
    """What one pass over an item learns: size, dtype, intensities, classes, hashes."""

    key: str
    height: int
    width: int
    dtype: str
    channels: int
    raw_min: float
    raw_max: float
    norm_sum: np.ndarray  # per channel, of the normalised image
    norm_sumsq: np.ndarray
    class_counts: dict[int, int] | None
    phash: np.ndarray
    digest: str
    info_band_rows: int = 0


class ProblemOut(BaseModel):
    level: str
    where: str
    message: str


class DatasetReport(BaseModel):
    """The result of ``datasets check`` (also its ``--json`` output)."""

    name: str
    root: str
    modality: str
    material: str
    encoding: dict[str, Any] | None
    encoding_source: str  # "spec", "inferred" or "none" (unlabeled)
    encoding_reason: str
    n_pairs: int
    n_items: int
    unpaired_images: list[str]
    unpaired_masks: list[str]
    sizes: dict[str, int]
    dtypes: dict[str, int]
    channels: dict[str, int]
    classes: list[str]
    classes_present: list[str]
    class_pixels: dict[str, int]
    class_frequencies: dict[str, float]
    single_class_masks: int
    splits: dict[str, dict[str, int]]
    tiling: str
    leaks: list[dict[str, Any]]
    problems: list[ProblemOut]
    usable: bool


@dataclass
class Inspection:
    """Everything one inspection produced (the report is its printable summary)."""

    spec: DatasetSpec
    discovery: Discovery
    stats: dict[str, ItemStats] = field(default_factory=dict)
    split: SplitResult = field(default_factory=SplitResult)
    leaks: list[Duplicate] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    encoding_source: str = "spec"
    encoding_reason: str = "given in the spec"
    cache: DecodeCache | None = None  # what read the items; its loader is shared by dataset()

    def dataset(self, cache_dir: Path | None = None) -> MicrographDataset:
        """The readable items as a tiled dataset with their splits.

        Decoding uses the inspected spec (with any inferred encoding); ``cache_dir`` keeps the
        decoded arrays on disk for the epochs after the first.
        """
        loader = self.cache.loader if self.cache is not None else None
        cache = DecodeCache(self.spec, cache_dir, loader=loader)
        refs = plan_tiles(self.spec, self.split.splits, cache)
        return MicrographDataset(self.spec, refs, cache, class_names(self.spec, self.stats))


def _with_inferred_encoding(spec: DatasetSpec, found: Discovery) -> tuple[DatasetSpec, str, str]:
    if spec.encoding is not None:
        return spec, "spec", "given in the spec"
    masks = sorted({i.mask for i in found.items if i.mask is not None})
    if not masks:
        return spec, "none", "no masks: unlabeled data"
    guess = infer_encoding(masks)
    if guess.encoding is None:
        raise MatsegError(f"{spec.name}: encoding", "an inferable mask encoding", guess.reason)
    update: dict[str, Any] = {"encoding": guess.encoding}
    if spec.classes is None:
        update["classes"] = guess.classes
    return spec.model_copy(update=update), "inferred", guess.reason


def _item_stats(item: Item, image: np.ndarray, mask: np.ndarray | None, policy: str) -> ItemStats:
    norm = normalise(np.asarray(image), policy).astype(np.float64)
    flat = norm.reshape(norm.shape[0], -1)
    counts = None
    if mask is not None:
        vals, cnt = np.unique(np.asarray(mask), return_counts=True)
        counts = {int(v): int(c) for v, c in zip(vals, cnt, strict=True)}
    return ItemStats(
        key=item.key,
        height=int(image.shape[1]),
        width=int(image.shape[2]),
        dtype=str(image.dtype),
        channels=int(image.shape[0]),
        raw_min=float(np.min(image)),
        raw_max=float(np.max(image)),
        norm_sum=flat.sum(axis=1),
        norm_sumsq=(flat**2).sum(axis=1),
        class_counts=counts,
        phash=perceptual_hash(np.asarray(image)),
        digest=hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest(),
    )


def inspect_dataset(
    spec: DatasetSpec,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Inspection:
    """Discover, read every item, split and look for leaks; collect every problem."""
    found = discover(spec)
    spec, source, reason = _with_inferred_encoding(spec, found)
    result = Inspection(spec, found, encoding_source=source, encoding_reason=reason)
    result.problems.extend(found.problems)
    if source == "inferred":
        result.problems.append(
            Problem("note", "encoding", f"inferred: {type(spec.encoding).__name__} ({reason})")
        )
    cache = DecodeCache(spec, cache_dir, loader=ItemLoader(spec, found.polygons))
    result.cache = cache
    good: list[Item] = []
    for n, item in enumerate(found.items):
        try:
            image, mask = cache.get(item)
        except MatsegError as exc:
            result.problems.append(Problem("error", exc.where, exc.detail()))
        else:
            result.stats[item.key] = _item_stats(item, image, mask, spec.normalise)
            good.append(item)
        if progress is not None:
            progress(n + 1, len(found.items))
    result.problems.extend(_class_problems(spec, result.stats))
    result.problems.extend(_channel_problems(spec, result.stats))
    if not good:
        result.problems.append(
            Problem(
                "error",
                str(spec.resolve(spec.images)),
                "no usable image/mask pairs found; check 'root', 'images' and 'masks' in the spec",
            )
        )
        return result
    result.split = assign_splits(good, spec)
    result.problems.extend(result.split.problems)
    split_of = {i.key: name for name, items in result.split.splits.items() for i in items}
    result.leaks = find_leaks(
        {k: result.stats[k].phash for k in split_of},
        {k: result.stats[k].digest for k in split_of},
        split_of,
    )
    for leak in result.leaks:
        kind = (
            "exact duplicate" if leak.exact else f"near duplicate (pHash distance {leak.distance})"
        )
        result.problems.append(
            Problem(
                "warning", leak.a, f"{kind} of {leak.b} across splits {leak.split_a}/{leak.split_b}"
            )
        )
    return result


def _class_problems(spec: DatasetSpec, stats: dict[str, ItemStats]) -> list[Problem]:
    """A decoding that leaves every mask one class is an error, not a dataset to train on."""
    labelled = {k: s.class_counts for k, s in stats.items() if s.class_counts is not None}
    if not labelled:
        return []
    present = set().union(*(set(c) for c in labelled.values())) - {spec.ignore_index}
    problems = []
    if len(present) <= 1:
        only = next(iter(present), None)
        name = _class_name(spec, only) if only is not None else "none"
        problems.append(
            Problem(
                "error",
                f"{spec.name}: encoding",
                f"every mask decodes to a single class ({name}); training on it would report a "
                "meaningless IoU. Check the encoding (e.g. class-index masks {0,1,2} read with a "
                "threshold at 127 all become background)",
            )
        )
    single = [k for k, c in labelled.items() if len(set(c) - {spec.ignore_index}) == 1]
    if single and len(present) > 1:
        problems.append(
            Problem(
                "warning",
                f"{spec.name}: masks",
                f"{len(single)} of {len(labelled)} masks contain a single class (e.g. {single[0]})",
            )
        )
    return problems


def _channel_problems(spec: DatasetSpec, stats: dict[str, ItemStats]) -> list[Problem]:
    """Images of one dataset with different channel counts (grey beside RGB) cannot share a
    model's first layer: an error here, before training would refuse them."""
    by_count: dict[int, list[str]] = {}
    for key, s in stats.items():
        by_count.setdefault(s.channels, []).append(key)
    if len(by_count) <= 1:
        return []
    common = max(by_count, key=lambda c: len(by_count[c]))
    odd = ", ".join(f"{len(keys)} with {c} (e.g. {keys[0]})" for c, keys in sorted(by_count.items())
                    if c != common)  # fmt: skip
    return [
        Problem(
            "error",
            f"{spec.name}: images",
            f"one channel count for every image; found {len(by_count[common])} images with "
            f"{common} channel(s) and {odd}: save them all grey or all RGB",
        )
    ]


def _class_name(spec: DatasetSpec, class_id: int) -> str:
    if spec.classes is not None and 0 <= class_id < len(spec.classes):
        return spec.classes[class_id]
    return "ignore" if class_id == spec.ignore_index else f"class_{class_id}"


def class_names(spec: DatasetSpec, stats: dict[str, ItemStats]) -> list[str]:
    """Declared class names, or names for the ids found."""
    if spec.classes is not None:
        return list(spec.classes)
    ids = {c for s in stats.values() if s.class_counts for c in s.class_counts} - {
        spec.ignore_index
    }
    return [f"class_{i}" for i in range(max(ids) + 1)] if ids else []


def _tiling_words(spec: DatasetSpec) -> str:
    t = spec.tiling
    patch = f"patches {t.patch_size} px, overlap {t.overlap}" if t.patch_size else "whole images"
    resize = {
        "none": "no resize",
        "fit": f"resize to fit {t.fit_size} px",
        "scale": f"scale x{t.scale:g}",
    }
    return f"{patch}; {resize[t.resize]}"


def split_summary(ins: Inspection) -> dict[str, dict[str, int]]:
    """Items, groups and training tiles (after the resize policy) per split."""
    t = ins.spec.tiling
    summary = ins.split.summary()
    for name, items in ins.split.splits.items():
        sizes = [
            (ins.stats[i.key].height, ins.stats[i.key].width) for i in items if i.key in ins.stats
        ]
        summary[name]["tiles"] = sum(
            len(tile_windows(h, w, t.patch_size, t.overlap)) for h, w in sizes
        )
    return summary


def report(ins: Inspection) -> DatasetReport:
    """The printable summary of an inspection."""
    spec, stats = ins.spec, ins.stats
    names = class_names(spec, stats)
    pixels: Counter[int] = Counter()
    for s in stats.values():
        pixels.update(s.class_counts or {})
    labelled_total = sum(v for k, v in pixels.items() if k != spec.ignore_index)
    class_pixels = {_class_name(spec, i): int(pixels.get(i, 0)) for i in range(len(names))}
    frequencies = {
        k: (v / labelled_total if labelled_total else 0.0) for k, v in class_pixels.items()
    }
    polygon = spec.encoding is not None and spec.encoding.type in POLYGON_ENCODINGS
    files = {i.image for i in ins.discovery.items if i.mask is not None or polygon}
    return DatasetReport(
        name=spec.name,
        root=str(spec.root_path()),
        modality=str(spec.modality),
        material=spec.material,
        encoding=None if spec.encoding is None else spec.encoding.model_dump(mode="json"),
        encoding_source=ins.encoding_source,
        encoding_reason=ins.encoding_reason,
        n_pairs=len(files),
        n_items=len(stats),
        unpaired_images=[str(p) for p in ins.discovery.unpaired_images],
        unpaired_masks=[str(p) for p in ins.discovery.unpaired_masks],
        sizes=dict(Counter(f"{s.height}x{s.width}" for s in stats.values())),
        dtypes=dict(Counter(s.dtype for s in stats.values())),
        channels=dict(Counter(str(s.channels) for s in stats.values())),
        classes=names,
        classes_present=[n for n, v in class_pixels.items() if v > 0],
        class_pixels=class_pixels,
        class_frequencies=frequencies,
        single_class_masks=sum(
            1
            for s in stats.values()
            if s.class_counts and len(set(s.class_counts) - {spec.ignore_index}) == 1
        ),
        splits=split_summary(ins),
        tiling=_tiling_words(spec),
        leaks=[vars(leak) for leak in ins.leaks],
        problems=[
            ProblemOut(level=p.level, where=p.where, message=p.message) for p in ins.problems
        ],
        usable=bool(stats) and not any(p.level == "error" for p in ins.problems),
    )
