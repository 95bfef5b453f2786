"""Is the heatmap faithful? The paper's perturbation analysis, made quantitative.

The image is cut into ``cell`` x ``cell`` blocks and the blocks are ranked by their mean H. For
each area fraction q, blur (the same kernel as the map) the top-q blocks, and separately as many
random blocks (averaged over ``draws``) and the lowest-q blocks, and measure the change of the
prediction inside A: ||Z*A - Z'*A||_1 / ||Z*A||_1. A faithful map degrades A far more when its
top blocks are perturbed; ``ratio`` is top / random per q, ``auc_ratio`` the ratio of the areas
under the two deletion curves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from matseg.datasets.tiling import tile_windows
from matseg.explain.heatmap import PredictionForward, Target, bounding_box
from matseg.explain.kernels import perturbed_source

FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


@dataclass
class Faithfulness:
    """Deletion curves of the top, random and lowest blocks, and their ratio."""

    fractions: list[float]
    top: list[float]
    random: list[float]
    low: list[float]
    ratio: list[float]
    auc_ratio: float
    cell: int
    kernel: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def faithfulness(
    model: torch.nn.Module,
    image: np.ndarray,
    roi: np.ndarray,
    heat: np.ndarray,
    kernel: str = "blur",
    cell: int = 16,
    fractions: tuple[float, ...] = FRACTIONS,
    draws: int = 5,
    precision: str = "32",
    target: Target = "probabilities",
    seed: int = 0,
) -> Faithfulness:
    """Deletion curves for ``heat`` (an (H, W) map of ``image``) inside region ``roi``."""
    h, w = image.shape[-2:]
    blocks = tile_windows(h, w, cell)
    means = np.array([heat[b.y : b.y + b.h, b.x : b.x + b.w].mean() for b in blocks])
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(blocks)), -means))  # high H first, ties at random
    forward = PredictionForward(model.eval(), precision, False, target)  # a few passes: whole
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    source = torch.from_numpy(perturbed_source(image, kernel, cell, seed))
    by, bx = bounding_box(roi)
    area = torch.from_numpy(roi[by, bx].astype(np.float32))
    clean = forward(x)[0][:, by, bx] * area
    norm = float(clean.abs().sum())

    def change(chosen: np.ndarray) -> float:
        p = x.clone()
        for i in chosen:
            b = blocks[int(i)]
            p[0, :, b.y : b.y + b.h, b.x : b.x + b.w] = source[:, b.y : b.y + b.h, b.x : b.x + b.w]
        out = forward(p)[0][:, by, bx] * area
        return float((out - clean).abs().sum()) / norm

    top, rand, low = [], [], []
    for q in fractions:
        n = max(1, round(q * len(blocks)))
        top.append(change(order[:n]))
        low.append(change(order[::-1][:n]))
        rand.append(
            float(
                np.mean([change(rng.choice(len(blocks), n, replace=False)) for _ in range(draws)])
            )
        )
    ratio = [t / r if r > 0 else float("inf") for t, r in zip(top, rand, strict=True)]
    auc_ratio = float(np.trapezoid(top, fractions) / max(np.trapezoid(rand, fractions), 1e-12))
    return Faithfulness(list(fractions), top, rand, low, ratio, auc_ratio, cell, kernel)
