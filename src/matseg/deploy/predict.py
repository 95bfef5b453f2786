"""Apply a run's model to new data: images, folders, multi-page stacks and XCT volumes.

Images larger than the training patch are predicted by blended sliding windows
(:mod:`matseg.deploy.sliding`). A volume (a TIFF stack) is predicted slice by slice along a
chosen axis and written back as a TIFF stack; with ``fuse_axes`` the three orthogonal passes'
probabilities are averaged. Outputs go to memory-mapped TIFF files row band by row band, so
memory is bounded by the tile batch and one slice, not by the volume. Images are read and
normalised the way the run's dataset spec reads its own, so the model sees what it was trained
on. When the job has fitted quality control, every input also gets its typicality and flag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from matseg.atomic import csv_bytes, write_bytes
from matseg.datasets.readers import (
    input_files,
    match_channels,
    normalisation,
    normalise,
    open_stack,
)
from matseg.datasets.spec import DatasetSpec
from matseg.deploy.sliding import pad_to_patch, predict_tiled, tiles_per_image
from matseg.errors import DataError
from matseg.models import resolve_precision
from matseg.quantities import GRAIN_QUANTITIES, Scale, default_quantities, mean_ci, measure_many
from matseg.rundir import QC_FILE, RunDir, mask_png
from matseg.trained import TrainedJob, load_trained
from matseg.training import predict_probabilities, uses_channels_last

Say = Callable[[str], None]


@dataclass
class Prediction:
    """One input and what was written for it."""

    source: str
    kind: str  # "image" or "volume"
    shape: tuple[int, ...]
    mask: str
    probabilities: str | None
    seconds: float
    tiles: int
    class_fractions: dict[str, float]
    # 'quantity:class' -> (value, unit): the microstructure quantities of the predicted mask
    quantities: dict[str, tuple[float | None, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Tiling:
    """How an input is cut and run: tile size, overlap, tiles per forward, precision."""

    patch: int
    overlap: float = 0.25
    batch_size: int = 8
    precision: str = "32"


@dataclass(frozen=True)
class PredictOptions:
    """How inputs are predicted: tile overlap, tiles per forward pass, precision (default: the
    job's), the slicing of volumes (``axis``, or the three axes fused), whether probabilities are
    written, and whether each input gets its typicality when the job has fitted QC."""

    overlap: float = 0.25
    batch_size: int = 8
    precision: str | None = None
    axis: int = 0
    fuse_axes: bool = False
    probabilities: bool = False
    quality: bool = True
    pixel_size_um: float | None = None  # for the quantities (default: the training spec's)


@dataclass
class PredictSummary:
    job: str
    out: Path
    predictions: list[Prediction] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)
    batch: list[dict[str, Any]] = field(default_factory=list)  # quantities over the batch


def is_volume(path: Path) -> bool:
    """A TIFF whose pages form a stack (z, y, x), not one (possibly RGB) image."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = series.shape, series.axes
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return False  # a damaged file: reading it as an image says what is wrong, in one line
    if len(shape) == 3 and axes[-1] in "SC" and shape[-1] in (3, 4):
        return False  # an RGB(A) image
    return len(shape) >= 3


def _fractions(mask: np.ndarray, classes: list[str]) -> dict[str, float]:
    counts = np.bincount(np.asarray(mask).ravel(), minlength=len(classes))[: len(classes)]
    total = max(int(counts.sum()), 1)
    return {c: round(float(n) / total, 6) for c, n in zip(classes, counts, strict=True)}


# Volumes above this many voxels get their area fractions only: labelling features in 3D holds
# an int64 label volume in memory (8 bytes per voxel).
FEATURE_VOXEL_LIMIT = 256**3


def _quantities(
    mask: np.ndarray, classes: list[str], scale: Scale
) -> dict[str, tuple[float | None, str]]:
    """The default quantities of a predicted mask (:mod:`matseg.quantities`)."""
    wanted = [
        (name, c) for name, c in default_quantities(classes)
        if mask.ndim == 2 or (name not in GRAIN_QUANTITIES
                              and (name == "area_fraction" or mask.size <= FEATURE_VOXEL_LIMIT))
    ]  # fmt: skip
    out = {}
    for m in measure_many(np.asarray(mask), wanted, scale):
        value = m.value if np.isfinite(m.value) else None
        out[f"{m.quantity}:{classes[m.class_id]}"] = (value, m.unit)
    return out


def predict_volume_array(
    model: torch.nn.Module,
    volume: np.ndarray,
    num_classes: int,
    channels: int,
    tiling: Tiling,
    channels_last: bool,
    normalise_mode: str,
    axis: int = 0,
    out_mask: np.ndarray | None = None,
    out_probabilities: np.ndarray | None = None,
    weight: float = 1.0,
    say: Say | None = None,
) -> int:
    """Predict a (z, y, x) array slice by slice along ``axis``; returns the tiles run.

    Writes class ids into ``out_mask`` and/or ADDS ``weight`` x probabilities into
    ``out_probabilities`` (K, z, y, x). Slices no larger than one tile are batched together
    (a 256^3 volume is 256 single-tile slices: one forward per batch, not per slice).
    """
    patch, overlap, batch_size, precision = (
        tiling.patch, tiling.overlap, tiling.batch_size, tiling.precision,
    )  # fmt: skip
    n = volume.shape[axis]
    h, w = (s for i, s in enumerate(volume.shape) if i != axis)
    single_tile = h <= patch and w <= patch
    group = batch_size if single_tile else 1
    tiles = 0
    autocast = precision == "bf16-mixed"
    for first in range(0, n, group):
        idx = range(first, min(first + group, n))
        images = [
            match_channels(
                normalise(np.asarray(np.take(volume, i, axis=axis))[None], normalise_mode),
                channels,
                f"slice {i}",
            )
            for i in idx
        ]
        if single_tile:
            batch = torch.from_numpy(np.stack([pad_to_patch(im, patch) for im in images]))
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                prob = predict_probabilities(model, batch, channels_last).float().numpy()
            probs = [p[:, :h, :w] for p in prob]
            tiles += len(idx)
        else:
            probs = []
            for im in images:
                p = np.zeros((num_classes, h, w), np.float32)
                predict_tiled(model, im, num_classes, patch, overlap, batch_size, precision,
                              channels_last, out_probabilities=p)  # fmt: skip
                probs.append(p)
                tiles += tiles_per_image(h, w, patch, overlap)
        for i, p in zip(idx, probs, strict=True):
            if out_mask is not None:
                _put(out_mask, axis, i, p.argmax(axis=0).astype(out_mask.dtype))
            if out_probabilities is not None:
                _add(out_probabilities, axis, i, weight * p)
        if say is not None and (idx[-1] + 1) * 10 // n > first * 10 // n:  # every 10%
            say(f"axis {axis}: slice {idx[-1] + 1}/{n}")
    return tiles


def predict_volume(
    trained: TrainedJob,
    path: Path,
    out: Path,
    tiling: Tiling,
    axis: int,
    fuse_axes: bool,
    probabilities: bool,
    say: Say,
    scale: Scale | None = None,
) -> Prediction:
    """A TIFF stack slice by slice along ``axis`` (or the three axes, probabilities averaged)."""
    spec: DatasetSpec = trained.data.inspection.spec
    classes = trained.data.classes
    k = len(classes)
    volume = open_stack(path)
    if volume.ndim != 3:
        raise DataError(str(path), "a (z, y, x) volume", f"shape {volume.shape}")
    mask_path = out / f"{path.stem}_mask.tif"
    mask = tifffile.memmap(mask_path, shape=volume.shape, dtype=np.uint8, photometric="minisblack")
    prob_path = out / f"{path.stem}_probabilities.tif" if probabilities else None
    prob = (
        tifffile.memmap(
            prob_path, shape=(k, *volume.shape), dtype=np.float16, photometric="minisblack"
        )
        if prob_path is not None
        else None
    )
    if prob is not None:
        prob[:] = 0
    common = dict(
        model=trained.model, volume=volume, num_classes=k, channels=trained.data.in_channels,
        tiling=tiling, channels_last=uses_channels_last(trained.job.training),
        normalise_mode=spec.normalise,
        say=lambda m: say(f"{path.name}: {m}"),
    )  # fmt: skip
    start, tiles = time.perf_counter(), 0
    if not fuse_axes:  # the mask from float32 probabilities; float16 only in the stored file
        tiles = predict_volume_array(**common, axis=axis, out_mask=mask, out_probabilities=prob)
    else:  # the three passes summed in a float32 scratch file beside the outputs
        scratch_path = out / f".{path.stem}_fusion.npy"
        acc = np.lib.format.open_memmap(scratch_path, "w+", np.float32, (k, *volume.shape))
        for ax in (0, 1, 2):
            tiles += predict_volume_array(**common, axis=ax, out_probabilities=acc, weight=1 / 3)
        for z in range(volume.shape[0]):  # slab by slab (bounded memory)
            slab = np.asarray(acc[:, z])
            mask[z] = slab.argmax(axis=0)
            if prob is not None:
                prob[:, z] = slab.astype(np.float16)
        del acc
        scratch_path.unlink()
    if prob is not None:
        prob.flush()
    mask.flush()
    fractions = _fractions(np.asarray(mask), classes)
    measured = _quantities(mask, classes, scale or Scale())
    del mask, prob
    return Prediction(str(path), "volume", tuple(volume.shape), str(mask_path),
                      str(prob_path) if probabilities else None, time.perf_counter() - start,
                      tiles, fractions, measured)  # fmt: skip


def _put(volume: np.ndarray, axis: int, i: int, values: np.ndarray) -> None:
    index: list[Any] = [slice(None)] * 3
    index[axis] = i
    volume[tuple(index)] = values


def _add(prob: np.ndarray, axis: int, i: int, values: np.ndarray) -> None:
    index: list[Any] = [slice(None)] * 4
    index[axis + 1] = i
    current = np.asarray(prob[tuple(index)], dtype=np.float32)
    prob[tuple(index)] = (current + values).astype(prob.dtype)


def predict_image(
    trained: TrainedJob,
    path: Path,
    out: Path,
    tiling: Tiling,
    probabilities: bool,
    scale: Scale | None = None,
) -> Prediction:
    """One 2D image: read like the dataset reads its own, sliding windows, mask PNG."""
    from matseg.explain.roi import read_image

    classes = trained.data.classes
    spec = trained.data.inspection.spec
    # the pixels stay in their own dtype; each batch of tiles is normalised (with the whole
    # image's statistics) and matched to the model's channels on its way in
    image = read_image(spec, path, normalised=False).image
    norm = normalisation(image, spec.normalise)
    channels = trained.data.in_channels
    match_channels(image[:, :1, :1], channels, str(path))  # refuse unmatched channels up front

    def prepare(tiles: np.ndarray) -> np.ndarray:
        return match_channels(norm.apply(tiles), channels, str(path), axis=1)

    h, w = image.shape[1:]
    k = len(classes)
    start = time.perf_counter()
    prob_path = out / f"{path.stem}_probabilities.tif" if probabilities else None
    prob = (
        tifffile.memmap(prob_path, shape=(k, h, w), dtype=np.float16, photometric="minisblack")
        if prob_path is not None
        else None
    )
    mask = predict_tiled(
        trained.model, image, k, tiling.patch, tiling.overlap, tiling.batch_size,
        tiling.precision, uses_channels_last(trained.job.training), out_probabilities=prob,
        prepare=prepare,
    )  # fmt: skip
    if prob is not None:
        prob.flush()
        del prob
    mask_path = write_bytes(out / f"{path.stem}_mask.png", mask_png(mask))
    tiles = tiles_per_image(h, w, tiling.patch, tiling.overlap)
    return Prediction(str(path), "image", (h, w), str(mask_path),
                      str(prob_path) if prob_path else None, time.perf_counter() - start,
                      tiles, _fractions(mask, classes),
                      _quantities(mask, classes, scale or Scale()))  # fmt: skip


def _quality(trained: TrainedJob, files: list[Path], slices: int = 16) -> list[dict[str, Any]]:
    """Typicality and flag per input image, and per slice (``slices`` evenly spaced) of each
    volume, when the job's quality control was fitted (``matseg qc fit``)."""
    from matseg.qc.workflow import LoadedJob, load_fitted, score_arrays, score_new_images

    if not trained.run.qc_file(trained.name, QC_FILE).is_file():
        return []
    fitted = load_fitted(LoadedJob(trained, trained.run.qc_settings()))
    images = [f for f in files if not is_volume(f)]
    rows = score_new_images(fitted, images) if images else []
    spec = trained.data.inspection.spec
    for path in (f for f in files if is_volume(f)):
        volume = open_stack(path)
        picks = np.unique(np.linspace(0, len(volume) - 1, min(slices, len(volume))).astype(int))
        arrays = [(f"{path.stem}#z{z}", normalise(np.asarray(volume[z])[None], spec.normalise))
                  for z in picks]  # fmt: skip
        rows += score_arrays(fitted, arrays)
    return rows


def predict_inputs(
    run: RunDir | Path,
    inputs: Sequence[Path],
    out: Path,
    job: str | None = None,
    options: PredictOptions | None = None,
    say: Say | None = None,
) -> PredictSummary:
    """Predict every input with the run's job or fold ensemble (default: the recommended
    combination's fold ensemble, or its best job by validation IoU); files into out."""
    o = options or PredictOptions()
    say = say or (lambda _: None)
    trained = load_trained(run if isinstance(run, RunDir) else RunDir.existing(run), job)
    tiling = Tiling(
        patch=trained.job.training.patch_size or 256,
        overlap=o.overlap,
        batch_size=o.batch_size,
        precision=resolve_precision(o.precision or trained.job.training.precision),
    )
    files = input_files(inputs, "an image, a TIFF stack or a folder of them")
    summary = PredictSummary(trained.name, out)
    out.mkdir(parents=True, exist_ok=True)
    scale = Scale(o.pixel_size_um or trained.data.inspection.spec.pixel_size_um)
    for path in files:
        if is_volume(path):
            pred = predict_volume(
                trained, path, out, tiling, o.axis, o.fuse_axes, o.probabilities, say, scale
            )
        else:
            pred = predict_image(trained, path, out, tiling, o.probabilities, scale)
        say(f"{path.name}: {pred.kind} {pred.shape}, {pred.tiles} tiles, {pred.seconds:.1f} s")
        summary.predictions.append(pred)
    if o.quality:
        summary.quality = _quality(trained, files)
    write_bytes(out / "predictions.csv", _csv(summary, trained.data.classes))
    summary.batch = batch_quantities(summary)
    write_bytes(out / "quantities-summary.csv", csv_bytes(summary.batch))
    return summary


def _flags(summary: PredictSummary) -> dict[str, list[dict[str, Any]]]:
    """Input stem -> its QC rows (an image's, or a volume's slices)."""
    flags: dict[str, list[dict[str, Any]]] = {}
    for row in summary.quality:
        flags.setdefault(str(row["image"]).split("#")[0].split("/")[-1], []).append(row)
    return flags


def batch_quantities(summary: PredictSummary, n_boot: int = 2000) -> list[dict[str, Any]]:
    """Each quantity over the batch: the mean with a bootstrap 95% CI over the images quality
    control did not flag (a flagged image's porosity is never averaged in silently), and how
    many were left out."""
    flags = _flags(summary)
    flagged = {
        p.source for p in summary.predictions
        if any(r["flagged"] for r in flags.get(Path(p.source).stem, []))
    }  # fmt: skip
    names = list(dict.fromkeys(n for p in summary.predictions for n in p.quantities))
    out = []
    for name in names:
        kept = [p.quantities[name][0] for p in summary.predictions
                if p.source not in flagged and name in p.quantities]  # fmt: skip
        values = np.array([v for v in kept if v is not None], dtype=float)
        unit = next(p.quantities[name][1] for p in summary.predictions if name in p.quantities)
        mean, (lo, hi) = mean_ci(values, n_boot)
        out.append({
            "quantity": name, "unit": unit, "images": int(values.size),
            "mean": _or_none(mean), "ci_low": _or_none(lo), "ci_high": _or_none(hi),
            "flagged_left_out": len(flagged),
            "quality_control": "fitted" if summary.quality else "not fitted: nothing left out",
        })  # fmt: skip
    return out


def _or_none(x: float) -> float | None:
    return x if np.isfinite(x) else None


def _csv(summary: PredictSummary, classes: list[str]) -> bytes:
    flags = _flags(summary)
    fractions = [f"fraction_{c}" for c in classes]
    quantities = {  # column "quantity:class (unit)"
        name: f"{name} ({unit})"
        for p in summary.predictions for name, (_, unit) in p.quantities.items()
    }  # fmt: skip
    fields = ["source", "kind", "shape", "mask", "probabilities", "seconds", "tiles",
              *fractions, "typicality", "flagged", "flagged_slices",
              *quantities.values()]  # fmt: skip
    lines = []
    for p in summary.predictions:
        rows = flags.get(Path(p.source).stem, [])
        lines.append({
            "source": p.source, "kind": p.kind, "shape": "x".join(map(str, p.shape)),
            "mask": p.mask, "probabilities": p.probabilities or "", "seconds": round(p.seconds, 3),
            "tiles": p.tiles, **{f"fraction_{c}": v for c, v in p.class_fractions.items()},
            "typicality": round(float(np.median([r["score"] for r in rows])), 6) if rows else "",
            "flagged": any(r["flagged"] for r in rows) if rows else "",
            "flagged_slices": sum(bool(r["flagged"]) for r in rows) if rows else "",
            **{quantities[n]: ("" if v is None else v) for n, (v, _) in p.quantities.items()},
        })  # fmt: skip
    return csv_bytes(lines, fields)
