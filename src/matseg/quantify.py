"""``matseg quantify``: the microstructure quantities of a labelled dataset or a mask folder.

A scientist's own masks (manual or from another tool) are measured the way matseg measures its
predictions (:mod:`matseg.quantities`), so the two can be set side by side. The source is a
dataset spec, a folder with ``images/`` and ``masks/``, or a folder of masks alone (their
encoding inferred, as for a dataset). Slices of one volume are stacked and measured in 3D.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matseg import quantities as q
from matseg.datasets.check import class_names
from matseg.datasets.infer import infer_encoding, spec_for_folder
from matseg.datasets.load import usable_inspection
from matseg.datasets.masks import MaskInput, decode_mask
from matseg.datasets.readers import is_supported, read_array
from matseg.datasets.spec import DatasetSpec, load_spec
from matseg.errors import DataError


@dataclass(frozen=True)
class QuantityRow:
    """One quantity of one class on one image (or volume)."""

    image: str
    split: str
    quantity: str
    class_name: str
    value: float
    unit: str
    note: str


@dataclass(frozen=True)
class QuantitySummary:
    """A quantity over the images: mean with its bootstrap 95% CI, and how many were defined."""

    quantity: str
    class_name: str
    unit: str
    n_images: int
    mean: float
    ci: tuple[float, float]


@dataclass
class QuantityTable:
    source: str
    classes: list[str]
    pixel_size_um: float | None
    rows: list[QuantityRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, n_boot: int = 2000, seed: int = 0) -> list[QuantitySummary]:
        by: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for r in self.rows:
            by[(r.quantity, r.class_name, r.unit)].append(r.value)
        out = []
        for (quantity, name, unit), values in by.items():
            v = np.array(values, dtype=float)
            mean, ci = q.mean_ci(v, n_boot, seed)
            out.append(QuantitySummary(quantity, name, unit, int(np.isfinite(v).sum()), mean, ci))
        return out


def _rows(
    image: str, split: str, mask: np.ndarray, classes: list[str], scale: q.Scale
) -> list[QuantityRow]:
    wanted = [
        (quantity, class_id)
        for quantity, class_id in q.default_quantities(classes)
        if not (mask.ndim == 3 and quantity in q.GRAIN_QUANTITIES)  # E112 is planar
    ]
    return [
        QuantityRow(image, split, m.quantity, classes[m.class_id], m.value, m.unit, m.note)
        for m in q.measure_many(mask, wanted, scale, ignore_index=255)
    ]


def _dataset_masks(spec: DatasetSpec) -> tuple[list[str], list[tuple[str, str, np.ndarray]]]:
    """Class names and (name, split, mask) of a labelled dataset; a volume's slices stacked."""
    ins, _ = usable_inspection(spec)
    if ins.cache is None or not any(i.mask is not None for i in ins.discovery.items):
        raise DataError(f"dataset {spec.name}", "a labelled dataset (masks)", "no masks")
    split_of = {i.key: name for name, items in ins.split.splits.items() for i in items}
    loader = ins.cache.loader
    stacks: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    out = []
    for item in ins.discovery.items:
        mask = loader.load(item).mask
        if mask is None:
            continue
        if spec.reader.kind == "volume" and item.index is not None:
            stacks[item.group].append((item.index, mask))
        else:
            out.append((item.key, split_of.get(item.key, "unassigned"), mask))
    for group, slices in stacks.items():
        volume = np.stack([m for _, m in sorted(slices, key=lambda s: s[0])])
        out.append((group, "volume", volume))
    return class_names(spec, ins.stats), out


def _mask_folder(folder: Path) -> tuple[list[str], list[tuple[str, str, np.ndarray]], str]:
    """Class names, masks and the encoding's reason of a folder holding masks only."""
    paths = sorted(p for p in folder.iterdir() if p.is_file() and is_supported(p))
    if not paths:
        raise DataError(str(folder), "mask files (PNG, TIFF, ...)", "none")
    inferred = infer_encoding(paths)
    if inferred.encoding is None:
        raise DataError(str(folder), "masks whose encoding can be inferred", inferred.reason,
                        "write a dataset spec with the encoding")  # fmt: skip
    masks = [
        (p.stem, "", decode_mask(inferred.encoding, MaskInput(str(p), raw=read_array(p))))
        for p in paths
    ]
    ids = sorted({int(v) for _, _, m in masks for v in np.unique(m) if v != 255})
    classes = inferred.classes or [f"class_{i}" for i in range(max(ids) + 1 if ids else 1)]
    return classes, masks, inferred.reason


def quantify(
    source: Path, pixel_size_um: float | None = None, classes: list[str] | None = None
) -> QuantityTable:
    """Every default quantity (:func:`matseg.quantities.default_quantities`) of every mask."""
    source = Path(source)
    notes = []
    if source.is_dir() and not (source / "masks").is_dir():
        names, masks, reason = _mask_folder(source)
        notes.append(f"mask encoding inferred: {reason}")
        size = pixel_size_um
    else:
        spec = spec_for_folder(source) if source.is_dir() else load_spec(source)
        names, masks = _dataset_masks(spec)
        size = pixel_size_um if pixel_size_um is not None else spec.pixel_size_um
    if classes is not None:
        if len(classes) < len(names):
            raise DataError("--classes", f"{len(names)} class names", f"{len(classes)}")
        names = list(classes)
    scale = q.Scale(size)
    if scale.note:
        notes.append(f"{q.UNKNOWN_SCALE} (give --pixel-size or the spec's pixel_size_um)")
    table = QuantityTable(str(source), names, size, notes=notes)
    for name, split, mask in masks:
        table.rows += _rows(name, split, mask, names, scale)
    return table
