"""Perturbation kernels delta: what a window of the image is replaced with.

Each kernel turns the whole image (C, H, W) into a "perturbed source" once; a window (i, j) of
the perturbed image D(i, j) is then that source's window pasted into D. One registry,
:data:`KERNELS`:

- ``blur``: Gaussian blur (sigma ``window / 4``) of the image, the paper's choice: the window
  keeps its mean intensity and loses its structure (edges, boundaries, phase contrast).
- ``mean``: each channel's mean intensity over the image (a constant, so Captum's Occlusion with
  that baseline gives the same map up to its averaging).
- ``zero``: zero (after normalisation).
- ``noise``: the image plus Gaussian noise of each channel's standard deviation (seeded).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from matseg.errors import InputError

Kernel = Callable[[np.ndarray, int, int], np.ndarray]


def _blur(image: np.ndarray, window: int, seed: int) -> np.ndarray:
    sigma = max(window / 4.0, 0.5)
    return ndimage.gaussian_filter(image, sigma=(0.0, sigma, sigma), mode="reflect")


def _mean(image: np.ndarray, window: int, seed: int) -> np.ndarray:
    return np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape).copy()


def _zero(image: np.ndarray, window: int, seed: int) -> np.ndarray:
    return np.zeros_like(image)


def _noise(image: np.ndarray, window: int, seed: int) -> np.ndarray:
    std = image.std(axis=(1, 2), keepdims=True)
    rng = np.random.default_rng(seed)
    return image + std * rng.standard_normal(image.shape).astype(image.dtype)


KERNELS: dict[str, Kernel] = {"blur": _blur, "mean": _mean, "zero": _zero, "noise": _noise}


def perturbed_source(image: np.ndarray, kernel: str, window: int, seed: int = 0) -> np.ndarray:
    """The image every window is taken from, float32 (C, H, W)."""
    if kernel not in KERNELS:
        raise InputError(f"explain kernel: expected one of {', '.join(KERNELS)}, found {kernel!r}")
    return KERNELS[kernel](image.astype(np.float32), window, seed).astype(np.float32)
