"""Figures without pyplot: the one figure-to-PNG helper, sample predictions, a dataset sample.

Figures are ``matplotlib.figure.Figure`` objects made directly, never through pyplot, so
drawing one changes no global backend or figure registry: the same code writes PNG files in a
headless run and returns figures a notebook displays inline.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def subplots(
    nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.0, 4.0), squeeze: bool = True
) -> tuple[Any, Any]:
    """A new figure and its axes grid (``squeeze`` as in ``pyplot.subplots``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def png(fig: Any, dpi: int = 80) -> bytes:
    """A figure as PNG bytes, laid out tightly."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def class_colours(n: int) -> list[tuple[float, float, float]]:
    """One distinct colour per class (tab10, then tab20), background first."""
    from matplotlib import colormaps

    base = list(colormaps["tab10"].colors) + list(colormaps["tab20"].colors)
    return [tuple(base[i % len(base)][:3]) for i in range(n)]  # type: ignore[misc]


def _grey_or_rgb(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A (C, H, W) image as something imshow shows: RGB for 3 channels, else channel mean."""
    if image.shape[0] == 3:
        rgb = np.moveaxis(image, 0, -1).astype(np.float64)
        low, high = np.percentile(rgb, (0.5, 99.5))
        return np.clip((rgb - low) / max(high - low, 1e-12), 0, 1), None
    return image.mean(axis=0), "gray"


def _labels_rgb(mask: np.ndarray, colours: Sequence[tuple[float, ...]], ignore: int) -> np.ndarray:
    out = np.ones((*mask.shape, 3))  # ignored pixels white
    for c, colour in enumerate(colours):
        out[mask == c] = colour[:3]
    out[mask == ignore] = 1.0
    return out


def sample_figure(
    image: np.ndarray,
    mask: np.ndarray | None,
    classes: Sequence[str],
    ignore_index: int = 255,
    title: str = "",
) -> Any:
    """Image, mask in class colours with a legend, and their overlay: a dataset item at a glance
    (torchgeo's ``plot`` convention), before any training."""
    from matplotlib.patches import Patch

    panels = 1 if mask is None else 3
    fig, axes = subplots(1, panels, figsize=(3.6 * panels, 3.6), squeeze=False)
    shown, cmap = _grey_or_rgb(image)
    axes[0, 0].imshow(shown, cmap=cmap)
    axes[0, 0].set_title(title or "image", fontsize=9)
    if mask is not None:
        colours = class_colours(len(classes))
        labels = _labels_rgb(mask, colours, ignore_index)
        axes[0, 1].imshow(labels, interpolation="nearest")
        axes[0, 1].set_title("mask", fontsize=9)
        axes[0, 2].imshow(shown, cmap=cmap)
        axes[0, 2].imshow(labels, alpha=0.4, interpolation="nearest")
        axes[0, 2].set_title("overlay", fontsize=9)
        handles = [
            Patch(color=c, label=f"{i}: {n}")
            for i, (n, c) in enumerate(zip(classes, colours, strict=False))
        ]
        if (mask == ignore_index).any():
            handles.append(Patch(facecolor="white", edgecolor="black", label="ignored"))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout(rect=(0, 0.08 if mask is not None else 0, 1, 1))
    return fig


def sample_predictions_png(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], ignore_index: int = 255
) -> bytes:
    """Rows of (key, image (C, H, W), ground truth, prediction): image, truth, prediction and the
    wrong pixels, so the report shows Z beside the truth."""
    fig, axes = subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    k = max(int(max(t[t != ignore_index].max(initial=0), p.max())) for _, _, t, p in rows) + 1
    for r, (key, image, truth, pred) in enumerate(rows):
        truth = truth.astype(np.int64)
        valid = truth != ignore_index
        wrong = (pred != truth) & valid
        panels = [
            (image.mean(axis=0), "gray", key),
            (np.where(valid, truth, -1), "viridis", "ground truth"),
            (pred, "viridis", "prediction"),
            (wrong, "Reds", f"difference ({100 * wrong.sum() / max(valid.sum(), 1):.1f}% wrong)"),
        ]
        for ax, (arr, cmap, title) in zip(axes[r], panels, strict=True):
            vmax = 1 if cmap == "Reds" else (None if cmap == "gray" else k - 1)
            ax.imshow(arr, cmap=cmap, vmin=0 if cmap != "gray" else None, vmax=vmax,
                      interpolation="nearest")  # fmt: skip
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    return png(fig)
