"""Sliding-window prediction of images larger than the training patch, in bounded memory.

Tiles of ``patch`` pixels overlap by ``overlap``; each tile's class probabilities are weighted by
a Gaussian importance map (nnU-Net's choice: the tile centre, where the model saw the most
context, counts most; the borders, where the receptive field is cut, least) and blended. Tiles
are processed one row band at a time, each band in groups of tile columns (about ``GROUP_PX``
pixels wide); finished pixels are written straight into the output arrays (which may be
memory-mapped files), and what a group leaves for the next group or band is carried on (across
the width in a scratch file), so the working memory is one group of probabilities plus one
batch of tiles whatever the image size.

Written by hand because MONAI's ``sliding_window_inference`` keeps the whole output in memory
and would pull in MONAI for one function.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from matseg.datasets.tiling import tile_starts
from matseg.errors import InputError
from matseg.training import predict_probabilities

Progress = Callable[[int, int], None]


def gaussian_importance(patch: int, sigma_scale: float = 0.125) -> np.ndarray:
    """(patch, patch) weights: a Gaussian centred on the tile, max 1, floored to stay positive."""
    centre = (patch - 1) / 2
    axis = np.exp(-0.5 * ((np.arange(patch) - centre) / (patch * sigma_scale)) ** 2)
    weights = np.outer(axis, axis)
    weights /= weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def tile_grid(height: int, width: int, patch: int, overlap: float) -> list[tuple[int, int]]:
    """Every (y, x) tile start of an image, row band by row band."""
    if not 0 <= overlap < 1:
        raise InputError(f"overlap: expected a fraction in [0, 1), found {overlap}")
    step = max(1, round(patch * (1 - overlap)))
    ys, xs = tile_starts(height, patch, step), tile_starts(width, patch, step)
    return [(y, x) for y in ys for x in xs]


def pad_to_patch(image: np.ndarray, patch: int) -> np.ndarray:
    """Reflect-pad an image smaller than the patch (then the crop is taken back)."""
    _, h, w = image.shape
    ph, pw = max(0, patch - h), max(0, patch - w)
    if not ph and not pw:
        return image
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode=mode)


def _argmax_classes(scores: np.ndarray) -> np.ndarray:
    """argmax over the first axis of (K, H, W), the first maximum winning as in ``argmax``.

    A pass per class over contiguous planes: several times faster than ``argmax(axis=0)``,
    which walks the class axis with a large stride.
    """
    best = scores[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8 if len(scores) < 256 else np.int64)
    for k in range(1, len(scores)):
        better = scores[k] > best
        index[better] = k
        np.maximum(best, scores[k], out=best)
    return index


@torch.no_grad()
def predict_tiled(
    model: torch.nn.Module,
    image: np.ndarray,
    num_classes: int,
    patch: int,
    overlap: float = 0.25,
    batch_size: int = 8,
    precision: str = "32",
    channels_last: bool = False,
    tta: str = "none",
    out_mask: np.ndarray | None = None,
    out_probabilities: np.ndarray | None = None,
    progress: Progress | None = None,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Class ids (H, W) of a (C, H, W) image by blended sliding windows.

    ``out_mask`` (H, W) and ``out_probabilities`` (K, H, W) may be given (e.g. memory-mapped
    files); finished rows are written into them band by band. Returns ``out_mask``.
    ``prepare`` turns each batch of raw tiles (N, C, p, p) into model input (per-pixel work such
    as normalisation and channel matching), so ``image`` can stay in its own dtype: an 8-bit
    image then takes a quarter of the memory of its float32 copy, or a twelfth for a grey
    image shown to an RGB model.
    """
    if image.ndim != 3:
        raise InputError(f"image: expected (C, H, W), found shape {image.shape}")
    if patch % 32:
        raise InputError(f"patch: expected a multiple of 32, found {patch}")
    _, h, w = image.shape
    # raw pixels for ``prepare`` in the machine's byte order (torch refuses others)
    pixels = image.astype(np.float32 if prepare is None else image.dtype.newbyteorder("="),
                          copy=False)  # fmt: skip
    padded = pad_to_patch(pixels, patch)
    hp, wp = padded.shape[1:]
    mask = out_mask if out_mask is not None else np.zeros((h, w), dtype=np.uint8)
    if mask.shape != (h, w):
        raise InputError(f"out_mask: expected shape {(h, w)}, found {mask.shape}")
    weight_t = torch.from_numpy(gaussian_importance(patch))
    tiles = tile_grid(hp, wp, patch, overlap)
    rows = sorted({y for y, _ in tiles})
    columns = [x for y, x in tiles if y == rows[0]]  # every band has the same tile columns
    step = columns[1] - columns[0] if len(columns) > 1 else patch
    groups = column_groups(columns, step, batch_size)
    k = num_classes  # channel k of the accumulators holds the weight sum
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = precision == "bf16-mixed"
    with warnings.catch_warnings():  # a read-only image (memory-mapped file): only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        source = torch.from_numpy(padded)  # a view: tiles are cut on torch's threads

    def finish(block: np.ndarray, y: int, x: int) -> None:
        """Write the finished pixels of ``block`` (k + 1, rows, columns) at (y, x)."""
        r, c = min(block.shape[1], h - y), min(block.shape[2], w - x)
        if r <= 0 or c <= 0:
            return
        # The weight sum is the same for every class: the argmax needs no division.
        mask[y : y + r, x : x + c] = _argmax_classes(block[:k, :r, :c]).astype(mask.dtype)
        if out_probabilities is not None:
            prob = block[:k, :r, :c] / block[k, :r, :c]
            out_probabilities[:, y : y + r, x : x + c] = prob.astype(out_probabilities.dtype)

    def run_tiles(band: torch.Tensor, xs: list[int], acc: np.ndarray, x0: int) -> None:
        """Every tile of one group of one band, blended into ``acc`` (columns from ``x0``)."""
        acc_t = torch.from_numpy(acc)
        for start in range(0, len(xs), batch_size):
            chunk = xs[start : start + batch_size]
            if all(b - a == step for a, b in itertools.pairwise(chunk)):
                # evenly spaced tiles: one strided view of the band, one copy into the batch
                strip = band[:, :, chunk[0] : chunk[-1] + patch].unfold(2, patch, step)
                batch = strip.permute(2, 0, 1, 3).contiguous()
            else:  # the last tile, moved back to end at the border
                batch = torch.stack([band[:, :, x : x + patch] for x in chunk])
            if prepare is not None:
                batch = torch.from_numpy(prepare(batch.numpy()))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                prob = predict_probabilities(model, batch, channels_last, tta).float()
            for n, x in enumerate(chunk):  # acc += probabilities x importance, in one pass
                acc_t[:k, :, x - x0 : x - x0 + patch].addcmul_(prob[n], weight_t)
                acc_t[k, :, x - x0 : x - x0 + patch].add_(weight_t)
            nonlocal done
            done += len(chunk)
            if progress is not None:
                progress(done, len(tiles))

    done = 0
    # What a band leaves for the rows the next band shares with it, across the whole width: a
    # scratch file when the band has several column groups, so that the working memory is one
    # group whatever the width (one group: in memory, no folder made per image or slice).
    with (
        tempfile.TemporaryDirectory(prefix="matseg-tiles-")
        if len(groups) > 1
        else nullcontext() as scratch
    ):
        shared = patch - min((b - a for a, b in itertools.pairwise(rows)), default=patch)

        def carry_buffer(name: str) -> np.ndarray:
            shape = (k + 1, max(shared, 1), wp)  # at most the rows two bands share
            if scratch is None:
                return np.zeros(shape, dtype=np.float32)
            return np.lib.format.open_memmap(Path(scratch) / f"{name}.npy", "w+", np.float32, shape)

        above, below = carry_buffer("above"), carry_buffer("below")
        above_rows = 0
        for r, y in enumerate(rows):
            final = rows[r + 1] - y if r + 1 < len(rows) else patch  # rows no later band touches
            band = source[:, y : y + patch]
            right: np.ndarray | None = None  # what this group leaves for the next one
            for g, xs in enumerate(groups):
                x0, x1 = xs[0], xs[-1] + patch
                acc = np.zeros((k + 1, patch, x1 - x0), dtype=np.float32)
                fresh = x0  # the first column no earlier group of this band covered
                if right is not None:
                    acc[:, :, : right.shape[2]] = right
                    fresh = x0 + right.shape[2]
                if above_rows:
                    acc[:, :above_rows, fresh - x0 :] += above[:, :above_rows, fresh:x1]
                run_tiles(band, xs, acc, x0)
                end = groups[g + 1][0] if g + 1 < len(groups) else x1  # columns finished here
                finish(acc[:, :final, : end - x0], y, x0)
                if final < patch:
                    below[:, : patch - final, x0:end] = acc[:, final:, : end - x0]
                right = acc[:, :, end - x0 :].copy() if g + 1 < len(groups) else None
            above, below = below, above
            above_rows = patch - final
        del above, below  # close the scratch files before their folder goes
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return mask


# A group of tile columns spans about this many pixels: the bound on the working memory (one
# group's probabilities), whatever the width of the image.
GROUP_PX = 2048


def column_groups(columns: list[int], step: int, batch_size: int) -> list[list[int]]:
    """Tile columns in groups of whole batches spanning about ``GROUP_PX`` pixels."""
    per = batch_size * max(1, round(GROUP_PX / (step * batch_size)))
    return [columns[i : i + per] for i in range(0, len(columns), per)]


def tiles_per_image(height: int, width: int, patch: int, overlap: float) -> int:
    """How many tiles ``predict_tiled`` runs for an image (for progress and benchmarks)."""
    return len(tile_grid(max(height, patch), max(width, patch), patch, overlap))


def overlap_factor(patch: int, overlap: float) -> float:
    """Tiles per patch-sized area on a large image: the cost of blending over no overlap."""
    step = max(1, round(patch * (1 - overlap)))
    return math.pow(patch / step, 2)
