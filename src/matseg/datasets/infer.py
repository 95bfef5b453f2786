"""Inferring a mask encoding from the masks themselves, and saying why.

Used when a spec gives no ``encoding`` (and for a plain ``images/`` + ``masks/`` folder). The
rule is conservative: a guess is only made when the stored values leave one sensible reading,
and the chosen encoding and the evidence are reported, never applied silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matseg.datasets.readers import read_array
from matseg.datasets.spec import (
    ColourClass,
    ColourEncoding,
    DatasetSpec,
    IndexEncoding,
    InstanceEncoding,
    MaskEncoding,
    ThresholdEncoding,
)
from matseg.errors import DataError

MAX_CLASSES = 64
MAX_COLOURS = 12


@dataclass(frozen=True)
class Inference:
    """The encoding chosen (or None when no reading is safe) and the reason, in words."""

    encoding: MaskEncoding | None
    classes: list[str] | None
    reason: str


def _sample(paths: list[Path], n: int) -> list[Path]:
    if len(paths) <= n:
        return paths
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in idx]


def _is_grey(raw: np.ndarray) -> bool:
    if raw.ndim == 2:
        return True
    rgb = raw[..., :3]
    return bool(
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    )


# How one mask reads on its own. Readings that one encoding serves together: a binary mask
# beside anti-aliased or grey-level ones, class indices beside instance ids (ids are indices
# too); every other mix is two encodings in one dataset, and no guess is safe.
_TOGETHER = [{"binary", "anti-aliased"}, {"binary", "grey levels"}, {"indices", "instance ids"}]


def _top(grey: np.ndarray) -> int:
    return int(np.iinfo(grey.dtype).max) if np.issubdtype(grey.dtype, np.integer) else 1


def mask_reading(raw: np.ndarray) -> tuple[str, list[int]]:
    """How a single mask reads (colour, fractional, empty, binary, indices, anti-aliased, grey
    levels, instance ids) and its first stored values, for the one-line report."""
    if not _is_grey(raw):
        return "colour", []
    grey = raw if raw.ndim == 2 else raw[..., 0]
    values = np.unique(grey)
    if np.issubdtype(grey.dtype, np.floating):
        if not (np.all(np.mod(values, 1) == 0) and values.min() >= 0):
            return "fractional", []
        values = values.astype(np.int64)
    vset, top = {int(v) for v in values}, _top(grey)
    shown = sorted(vset)[:8]
    if vset <= {0}:
        return "empty", shown
    if vset <= {0, top} and top > 1:
        return "binary", shown
    if vset <= set(range(MAX_CLASSES)):
        return "indices", shown
    if float(((grey == 0) | (grey == top)).mean()) >= 0.9 and top > 1:
        return "anti-aliased", shown
    if len(vset) <= MAX_CLASSES and top == 255:
        return "grey levels", shown
    return "instance ids", shown


def _disagreement(readings: dict[Path, tuple[str, list[int]]]) -> str | None:
    """None when one encoding can read every mask; else which masks disagree with the
    majority, with their values."""
    kinds = {kind for kind, _ in readings.values() if kind != "empty"}
    if len(kinds) <= 1 or any(kinds <= group for group in _TOGETHER):
        return None
    counts = {k: sum(kind == k for kind, _ in readings.values()) for k in kinds}
    majority = max(counts, key=lambda k: counts[k])
    odd = [(p, kind, v) for p, (kind, v) in readings.items() if kind not in ("empty", majority)]
    listed = "; ".join(f"{p.name} ({kind}, values {v})" for p, kind, v in odd[:4])
    more = f" and {len(odd) - 4} more" if len(odd) > 4 else ""
    return (
        f"masks that disagree on their encoding: {counts[majority]} of {len(readings)} sampled "
        f"read as {majority}, {len(odd)} differ: {listed}{more}; write the spec's 'encoding' "
        "(or re-export those masks) rather than have matseg guess"
    )


def infer_encoding(mask_paths: list[Path], n_sample: int = 24) -> Inference:
    """Look at up to ``n_sample`` masks, each on its own, and choose an encoding with the
    evidence; masks that need different encodings are refused, naming them."""
    sample = _sample(mask_paths, n_sample)
    if not sample:
        return Inference(None, None, "no mask files to infer an encoding from")
    raws, readings = [], {}
    for path in sample:
        try:
            raw = read_array(path)
        except DataError:
            continue  # the loader reports every unreadable mask; infer from the readable ones
        raws.append(raw)
        readings[path] = mask_reading(raw)
    if not raws:
        return Inference(None, None, "none of the sampled masks could be read")
    disagreement = _disagreement(readings)
    if disagreement is not None:
        return Inference(None, None, disagreement)
    where = f"{len(sample)} of {len(mask_paths)} masks"
    if not all(_is_grey(r) for r in raws):
        colours: dict[tuple[int, int, int], int] = {}
        for raw in raws:
            rgb = raw.reshape(-1, raw.shape[-1])[:, :3]
            if rgb.dtype == np.uint16:
                rgb = (rgb.astype(np.uint32) * 255 + 32767) // 65535
            uniq, counts = np.unique(rgb.astype(np.int64), axis=0, return_counts=True)
            for colour, count in zip(uniq, counts, strict=True):
                key = (int(colour[0]), int(colour[1]), int(colour[2]))
                colours[key] = colours.get(key, 0) + int(count)
            if len(colours) > MAX_COLOURS:
                return Inference(
                    None,
                    None,
                    f"colour masks with more than {MAX_COLOURS} colours in {where} (an overlay on "
                    "the micrograph?): write a 'colour' encoding with the colour -> class table",
                )
        ordered = sorted(colours, key=lambda c: (c != (0, 0, 0), -colours[c]))
        enc = ColourEncoding(
            colours=[ColourClass(rgb=c, class_id=i) for i, c in enumerate(ordered)], default_class=0
        )
        names = ["background" if c == (0, 0, 0) else f"rgb{c}" for c in ordered]
        return Inference(enc, names, f"colour masks with {len(ordered)} colours in {where}")

    greys = [r if r.ndim == 2 else r[..., 0] for r in raws]
    if any(np.issubdtype(g.dtype, np.floating) for g in greys):
        vals = np.unique(np.concatenate([np.unique(g) for g in greys]))
        if np.all(np.mod(vals, 1) == 0) and vals.min() >= 0 and vals.max() < MAX_CLASSES:
            greys = [g.astype(np.int64) for g in greys]
        else:
            return Inference(
                ThresholdEncoding(threshold=0.5),
                ["background", "foreground"],
                f"float masks with fractional values in {where}: "
                "thresholded at 0.5 (bright = foreground)",
            )
    values = np.unique(np.concatenate([np.unique(g) for g in greys]))
    top = _top(greys[0])
    vset = {int(v) for v in values}
    shown = sorted(vset)[:10]
    if vset <= {0, top} and top > 1:
        return Inference(
            IndexEncoding(values={0: 0, top: 1}),
            ["background", "foreground"],
            f"values {{0, {top}}} in {where}: binary, {top} = foreground",
        )
    if vset <= set(range(MAX_CLASSES)):
        k = max(vset) + 1
        names = ["background", "foreground"] if k <= 2 else [f"class_{i}" for i in range(k)]
        return Inference(
            IndexEncoding(),
            names[: max(k, 2)],
            f"values {shown} in {where}: class indices 0..{k - 1}",
        )
    total = sum(g.size for g in greys)
    extreme = sum(int(((g == 0) | (g == top)).sum()) for g in greys)
    if extreme / total >= 0.9 and top > 1:
        mid = (top + 1) / 2
        levels = sum(kind == "anti-aliased" for kind, _ in readings.values())
        rest = " (the rest binary)" if levels < len(readings) else ""
        return Inference(
            ThresholdEncoding(threshold=mid, polarity="bright"),
            ["background", "foreground"],
            f"{len(vset)} grey levels in {levels} of {len(readings)} sampled masks{rest}, "
            f"{extreme / total:.0%} of pixels at 0 or {top}: anti-aliased binary, "
            f"thresholded at {mid:g} (bright = foreground)",
        )
    if len(vset) <= MAX_CLASSES and top == 255:
        ordered = sorted(vset)
        return Inference(
            IndexEncoding(values={v: i for i, v in enumerate(ordered)}),
            [f"class_{i}" for i in range(len(ordered))],
            f"grey levels {shown} in {where}: mapped to classes 0..{len(ordered) - 1} in order",
        )
    return Inference(
        InstanceEncoding(to="binary"),
        ["background", "object"],
        f"{len(vset)} distinct ids in {where}: instance labels, made binary (0 = background)",
    )


def spec_for_folder(folder: Path) -> DatasetSpec:
    """A plain folder with ``images/`` and ``masks/`` side by side (the paper code's layout)."""
    folder = Path(folder)
    missing = [name for name in ("images", "masks") if not (folder / name).is_dir()]
    if missing:
        raise DataError(
            str(folder),
            "a dataset spec JSON or a folder with images/ and masks/",
            f"no {' or '.join(m + '/' for m in missing)}",
            "write a spec (see examples/)",
        )
    spec = DatasetSpec(name=folder.resolve().name, root=str(folder.resolve()))
    return spec
