"""Explain one image of a run: heatmap, faithfulness, figure and files under ``RUN/explain/``.

``RUN/explain/<job>/<image stem>/`` receives ``heatmap.npy`` (H at image resolution),
``window_scores.npy`` (H per window position), ``explain.png`` (image with A's contour, H over
it, the prediction: the paper's Figure 2d, plus the deletion curves) and ``explain.json``
(settings, timings, faithfulness, where H concentrates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from matseg.atomic import write_bytes, write_json, write_npy
from matseg.explain.faithfulness import Faithfulness, faithfulness
from matseg.explain.heatmap import Compile, Heatmap, Progress, Target, counterfactual_heatmap
from matseg.explain.roi import read_image, region_of_interest
from matseg.models import resolve_precision
from matseg.plots import png, subplots
from matseg.rundir import EXPLAIN_FIGURE, EXPLAIN_FILE, HEATMAP_FILE, RunDir
from matseg.trained import TrainedJob, load_trained
from matseg.training import predict_probabilities


@dataclass(frozen=True)
class ExplainOptions:
    """How H is computed: the perturbation (``kernel``, ``window``, ``stride``), what is compared
    inside A (``target``), the precision, the deletion-curve check, and compiling."""

    kernel: str = "blur"
    window: int = 16
    stride: int = 8
    target: Target = "probabilities"
    precision: str = "32"
    check_faithfulness: bool = True
    compile: Compile = "auto"


def concentration(heat: np.ndarray, roi: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Where H lies: its share inside A and on predicted class boundaries, against their area.

    An enrichment above 1 means H concentrates there more than a uniform map would.
    """
    total = float(heat.sum())
    edges = np.zeros_like(prediction, dtype=bool)
    edges[:-1] |= prediction[:-1] != prediction[1:]
    edges[:, :-1] |= prediction[:, :-1] != prediction[:, 1:]
    edges = ndimage.binary_dilation(edges, iterations=2)
    out = {"roi_area": float(roi.mean()), "boundary_area": float(edges.mean())}
    out["roi_share"] = float(heat[roi].sum()) / total if total > 0 else float("nan")
    out["boundary_share"] = float(heat[edges].sum()) / total if total > 0 else float("nan")
    out["roi_enrichment"] = out["roi_share"] / out["roi_area"] if out["roi_area"] else float("nan")
    out["boundary_enrichment"] = (
        out["boundary_share"] / out["boundary_area"] if out["boundary_area"] else float("nan")
    )
    return out


def explain_image(
    run: RunDir | Path,
    image_path: Path,
    roi: str | None = None,
    job: str | None = None,
    options: ExplainOptions | None = None,
    out: Path | None = None,
    progress: Progress | None = None,
    trained: TrainedJob | None = None,
) -> dict[str, Any]:
    """Heatmap (and its faithfulness) of one image for a run's job; files into ``out``
    (default: the run's explain folder). ``trained``: the job already loaded (no re-reading)."""
    o = options or ExplainOptions()
    run = run if isinstance(run, RunDir) else RunDir.existing(run)
    trained = trained if trained is not None else load_trained(run, job)
    spec = trained.data.inspection.spec
    target_image = read_image(spec, image_path)
    region = region_of_interest(roi, target_image, spec)
    image = target_image.image
    precision = resolve_precision(o.precision)  # "auto": bf16 only where it is native
    heat = counterfactual_heatmap(
        trained.model, image, region, o.kernel, o.window, o.stride, o.target, precision,
        progress=progress, compile=o.compile,
    )  # fmt: skip
    with torch.no_grad():
        prob = predict_probabilities(trained.model, torch.from_numpy(image)[None], False)
    prediction = prob.argmax(1)[0].numpy()
    faith = (
        faithfulness(
            trained.model, image, region, heat.image_map, o.kernel, o.window, target=o.target
        )
        if o.check_faithfulness
        else None
    )
    folder = out or run.explain_dir(trained.name, image_path.stem)
    write_npy(folder / HEATMAP_FILE, heat.image_map.astype(np.float32))
    write_npy(folder / "window_scores.npy", heat.window_scores)
    write_bytes(folder / EXPLAIN_FIGURE, figure(image, region, heat, prediction, faith))
    result = {
        "job": trained.name,
        "job_label": trained.label,
        "image": str(image_path),
        "roi": roi or "whole image",
        "kernel": o.kernel,
        "window": o.window,
        "stride": o.stride,
        "target": o.target,
        "precision": precision,
        "windows": heat.evaluated + heat.skipped,
        "windows_run": heat.evaluated,
        "windows_skipped_out_of_reach": heat.skipped,
        "footprint_px": heat.footprint,
        "batch_size": heat.batch_size,
        "compiled": heat.compiled,
        "notes": heat.notes,
        "seconds": heat.seconds,
        "max_h": float(heat.window_scores.max()),
        "concentration": concentration(heat.image_map, region, prediction),
        "faithfulness": faith.to_dict() if faith else None,
        "folder": str(folder),
    }
    write_json(folder / EXPLAIN_FILE, result)
    return result


def figure(
    image: np.ndarray,
    roi: np.ndarray,
    heat: Heatmap,
    prediction: np.ndarray,
    faith: Faithfulness | None,
) -> bytes:
    """Image with A's contour | H over the image | prediction | deletion curves."""
    grey = image.mean(axis=0)
    panels = 4 if faith else 3
    fig, axes = subplots(1, panels, figsize=(4 * panels, 4))
    axes[0].imshow(grey, cmap="gray")
    axes[0].set_title("image and region A", fontsize=9)
    axes[1].imshow(grey, cmap="gray")
    shown = axes[1].imshow(heat.image_map, cmap="inferno", alpha=0.6)
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    axes[1].set_title(f"H ({heat.kernel}, window {heat.window}, stride {heat.stride})", fontsize=9)
    axes[2].imshow(prediction, cmap="viridis", interpolation="nearest")
    axes[2].set_title("prediction Z", fontsize=9)
    for ax in axes[:3]:
        if not roi.all():
            ax.contour(roi, levels=[0.5], colors="cyan", linewidths=1)
        ax.set_axis_off()
    if faith:
        q = [100 * f for f in faith.fractions]
        axes[3].plot(q, faith.top, "o-", label="top H blocks")
        axes[3].plot(q, faith.random, "s--", label="random blocks")
        axes[3].plot(q, faith.low, "^:", label="lowest H blocks")
        axes[3].set_xlabel("area perturbed (%)")
        axes[3].set_ylabel("change inside A (relative L1)")
        axes[3].set_title(f"deletion curves: AUC ratio {faith.auc_ratio:.1f}", fontsize=9)
        axes[3].legend(fontsize=8)
    return png(fig)
