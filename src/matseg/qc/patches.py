"""Patches of whole images, the unit quality control embeds and scores.

An image is cut into non-overlapping tiles (the dataset layer's tiling: the last row and column
flush, smaller images padded); each patch remembers its image, and an image's typicality is the
median of its patches' scores: an image is as typical as its typical half.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from matseg.datasets.tiling import Window, cut, tile_windows
from matseg.errors import DataError

Images = Sequence[tuple[str, np.ndarray]]  # (key, (C, H, W) normalised image)


@dataclass
class Patches:
    """Patches (N, C, s, s) of whole images, each knowing its image and window."""

    arrays: np.ndarray
    owners: list[str]  # image key per patch
    windows: list[Window]  # where each patch lies in its image


def cut_patches(
    images: Iterable[tuple[str, np.ndarray]], size: int, max_per_image: int, seed: int
) -> Patches:
    """Non-overlapping tiles of each (key, (C, H, W)) image, the last row / column flush (the
    dataset layer's tiling; smaller images padded); at most ``max_per_image``, chosen seeded."""
    arrays, owners, windows = [], [], []
    rng = np.random.default_rng(seed)
    for key, image in images:
        grid = tile_windows(int(image.shape[-2]), int(image.shape[-1]), size)
        if len(grid) > max_per_image:
            grid = [grid[i] for i in sorted(rng.choice(len(grid), max_per_image, replace=False))]
        for window in grid:
            patch, _ = cut(np.asarray(image), None, window, 0)
            arrays.append(patch.astype(np.float32, copy=False))
            owners.append(key)
            windows.append(window)
    if not arrays:
        raise DataError("quality control", "at least one image", "none")
    return Patches(np.stack(arrays), owners, windows)


def image_scores(patches: Patches, scores: np.ndarray) -> dict[str, float]:
    """Median patch score per image: an image is as typical as its typical half."""
    by_image: dict[str, list[float]] = {}
    for owner, s in zip(patches.owners, scores, strict=True):
        by_image.setdefault(owner, []).append(float(s))
    return {key: float(np.median(v)) for key, v in by_image.items()}


def as_images(images: Any) -> list[tuple[str, np.ndarray]]:
    """(key, image) pairs from what a user has: such pairs, bare (C, H, W) or (H, W) arrays, or
    a dataset of samples (every tile keeps its image's key, so tiles score as one image)."""
    if hasattr(images, "__getitem__") and hasattr(images, "spec"):  # a MicrographDataset
        out = []
        for i in range(len(images)):
            sample = images[i]
            out.append((sample.meta.key, sample.image))
        return out
    if isinstance(images, np.ndarray):
        images = [images] if images.ndim in (2, 3) else list(images)
    out = []
    for n, item in enumerate(images):
        key, image = item if isinstance(item, tuple) else (f"image{n}", item)
        image = np.asarray(image, dtype=np.float32)
        out.append((str(key), image[None] if image.ndim == 2 else image))
    return out
