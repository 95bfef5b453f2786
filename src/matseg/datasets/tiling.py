"""Tiling: cut a large micrograph into overlapping patches that cover every pixel.

Written by hand because it is ten lines and must match prediction-time stitching exactly: the
last row / column of tiles is pushed flush to the image edge instead of padding, so every tile
is real data; images smaller than a patch are padded (image: reflect, mask: ignore index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A patch position: top-left corner and size, in pixels of the (resized) image."""

    y: int
    x: int
    h: int
    w: int


def tile_starts(length: int, patch: int, step: int) -> list[int]:
    """Start offsets covering ``length`` with tiles of ``patch``; the last tile ends flush."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, step))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def tile_windows(height: int, width: int, patch: int | None, overlap: int = 0) -> list[Window]:
    """Windows covering an image; one full-image window when ``patch`` is None."""
    if patch is None:
        return [Window(0, 0, height, width)]
    step = patch - overlap
    return [
        Window(y, x, patch, patch)
        for y in tile_starts(height, patch, step)
        for x in tile_starts(width, patch, step)
    ]


def cut(
    image: np.ndarray, mask: np.ndarray | None, window: Window, ignore_index: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The window of a (C, H, W) image and its mask, padded when the image is smaller."""
    img = image[:, window.y : window.y + window.h, window.x : window.x + window.w]
    msk = (
        None
        if mask is None
        else mask[window.y : window.y + window.h, window.x : window.x + window.w]
    )
    pad_h, pad_w = window.h - img.shape[1], window.w - img.shape[2]
    if pad_h > 0 or pad_w > 0:
        mode = "reflect" if min(img.shape[1:]) > 1 else "edge"
        img = np.pad(img, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)
        if msk is not None:
            msk = np.pad(msk, ((0, pad_h), (0, pad_w)), constant_values=ignore_index)
    return img, msk
