"""The dataset fingerprint: what later steps need to know about the data, written as JSON.

Image sizes, dtypes, per-channel intensity statistics (of the normalised images a model sees,
and the stored value range), class pixel frequencies per split, the split summary and the
tiling / resize policy. Weighted IoU and recommendations read it; a user can too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from matseg.datasets.check import Inspection, ItemStats, class_names, split_summary


def _channel_stats(stats: list[ItemStats]) -> list[dict[str, float]]:
    if not stats:
        return []
    n_channels = max(s.channels for s in stats)
    out = []
    for c in range(n_channels):
        rows = [s for s in stats if s.channels > c]
        n = sum(s.height * s.width for s in rows)
        total = sum(float(s.norm_sum[c]) for s in rows)
        sq = sum(float(s.norm_sumsq[c]) for s in rows)
        mean = total / n
        out.append(
            {
                "mean": mean,
                "std": float(np.sqrt(max(sq / n - mean * mean, 0.0))),
                "raw_min": min(s.raw_min for s in rows),
                "raw_max": max(s.raw_max for s in rows),
            }
        )
    return out


def _class_frequencies(stats: list[ItemStats], names: list[str], ignore: int) -> dict[str, float]:
    pixels: Counter[int] = Counter()
    for s in stats:
        pixels.update(s.class_counts or {})
    total = sum(v for k, v in pixels.items() if k != ignore)
    return {name: (pixels.get(i, 0) / total if total else 0.0) for i, name in enumerate(names)}


def fingerprint(ins: Inspection) -> dict[str, Any]:
    """The fingerprint of an inspected dataset (plain JSON-able data)."""
    spec = ins.spec
    names = class_names(spec, ins.stats)
    per_split: dict[str, Any] = {}
    tiles = split_summary(ins)
    for split, items in ins.split.splits.items():
        rows = [ins.stats[i.key] for i in items if i.key in ins.stats]
        per_split[split] = {
            "items": len(rows),
            "groups": len({i.group for i in items}),
            "tiles": tiles[split]["tiles"],
            "pixels": int(sum(s.height * s.width for s in rows)),
            "channel_stats": _channel_stats(rows),
            "class_frequencies": _class_frequencies(rows, names, spec.ignore_index),
        }
    everything = list(ins.stats.values())
    return {
        "name": spec.name,
        "modality": str(spec.modality),
        "material": spec.material,
        "pixel_size_um": spec.pixel_size_um,
        "n_items": len(everything),
        "sizes": dict(Counter(f"{s.height}x{s.width}" for s in everything)),
        "dtypes": dict(Counter(s.dtype for s in everything)),
        "channels": dict(Counter(str(s.channels) for s in everything)),
        "normalise": spec.normalise,
        "channel_stats": _channel_stats(everything),
        "classes": names,
        "class_frequencies": _class_frequencies(everything, names, spec.ignore_index),
        "splits": per_split,
        "split_method": spec.split.model_dump(mode="json"),
        "tiling": spec.tiling.model_dump(mode="json"),
        "encoding": None if spec.encoding is None else spec.encoding.model_dump(mode="json"),
        "encoding_source": ins.encoding_source,
        "leaks": len(ins.leaks),
    }
