"""Output quality control: is a predicted MASK typical, whatever the IoU says?

The paper's AFM case study: predictions whose morphology is unlike the training masks (phases
fragmented, merged or swapped) are flagged even when their IoU is moderately high. Patches of the
training split's ground-truth masks are embedded with ``mask-morphology``; the chosen detector is
fitted on them, its threshold fixed on the validation masks; each saved test prediction is
scored (median patch score per image) and set beside its IoU. A figure shows the least typical
predictions: prediction, ground truth, difference and overlay, with IoU and score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr

from matseg import metrics
from matseg.atomic import write_bytes, write_json
from matseg.plots import png, subplots
from matseg.qc.detectors import make_detector
from matseg.qc.evaluation import acceptance_threshold
from matseg.qc.extractors import MaskMorphology
from matseg.qc.patches import cut_patches, image_scores
from matseg.qc.workflow import LoadedJob
from matseg.rundir import OUTPUT_QC_FIGURE, OUTPUT_QC_FILE


def _masks(loaded: LoadedJob, split: str) -> list[tuple[str, np.ndarray]]:
    dataset = loaded.data.dataset.split(split)
    out = []
    for i in range(len(dataset)):
        sample = dataset[i]
        if sample.mask is not None:
            out.append((sample.meta.key, sample.mask[None].astype(np.float32)))
    return out


def _predictions(loaded: LoadedJob, split: str) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(key, prediction, ground truth, image IoU) of every saved prediction of ``split``."""
    evaluation = loaded.trained.evaluations.get(split)
    if evaluation is None:
        return []
    truths = dict(_masks(loaded, split))
    out = []
    for info, cm in zip(evaluation.images, evaluation.confusions, strict=True):
        pred = loaded.trained.prediction(split, info.key)
        iou = float(np.nanmean(metrics.iou(np.asarray(cm))))
        out.append((info.key, pred, truths[info.key][0].astype(np.int64), iou))
    return out


def output_qc(
    loaded: LoadedJob, splits: list[str] | None = None, figure_rows: int = 4
) -> dict[str, Any]:
    """Typicality of predicted masks per image against the training masks; writes JSON + figure."""
    s = loaded.settings
    k = len(loaded.data.classes)
    extractor = MaskMorphology(k)
    size, cap = s.patch_size, s.max_patches_per_image
    train = cut_patches(_masks(loaded, "train"), size, cap, s.seed)
    val = cut_patches(_masks(loaded, "val"), size, cap, s.seed + 1)
    detector = make_detector(s.detector, seed=s.seed, k=s.k).fit(
        {"mask": extractor.embed(train.arrays)}
    )
    threshold = acceptance_threshold(
        detector.score_samples({"mask": extractor.embed(val.arrays)}), s.accept
    )
    splits = splits or [
        sp for sp in loaded.data.inspection.split.splits if sp not in ("train", "val")
    ]
    rows: list[dict[str, Any]] = []
    shown: list[tuple[str, np.ndarray, np.ndarray, float, float]] = []
    for split in splits:
        preds = _predictions(loaded, split)
        if not preds:
            continue
        patches = cut_patches(
            [(key, p[None].astype(np.float32)) for key, p, _, _ in preds], size, cap, s.seed + 2
        )
        scores = image_scores(
            patches, detector.score_samples({"mask": extractor.embed(patches.arrays)})
        )
        for key, pred, truth, iou in preds:
            rows.append(
                {
                    "split": split,
                    "image": key,
                    "iou": iou,
                    "score": scores[key],
                    "flagged": scores[key] < threshold,
                }
            )
            shown.append((f"{split}: {key}", pred, truth, iou, scores[key]))
    ious = np.array([r["iou"] for r in rows])
    typ = np.array([r["score"] for r in rows])
    rho = float(spearmanr(typ, ious).statistic) if len(rows) > 2 else float("nan")
    result = {
        "job": loaded.trained.name,
        "extractor": "mask-morphology",
        "detector": s.detector,
        "threshold": threshold,
        "images": rows,
        "spearman_typicality_vs_iou": rho,
        "convention": "score = typicality of the predicted mask's morphology against the training "
        "masks (higher = more typical); threshold accepts "
        f"{s.accept:.0%} of validation ground-truth patches",
    }
    write_json(loaded.file(OUTPUT_QC_FILE), result)
    if shown:
        shown.sort(key=lambda t: t[4])
        write_bytes(loaded.file(OUTPUT_QC_FIGURE), _figure(shown[:figure_rows], k))
    return result


def _figure(rows: list[tuple[str, np.ndarray, np.ndarray, float, float]], k: int) -> bytes:
    """Rows: prediction, ground truth, difference, overlay; titled with IoU and typicality."""
    fig, axes = subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for r, (name, pred, truth, iou, score) in enumerate(rows):
        valid = truth < k
        diff = np.where(valid, pred != truth, False)
        overlay = np.zeros((*pred.shape, 3))
        overlay[..., 1] = (pred == truth) & valid
        overlay[..., 0] = diff
        panels = [
            (pred, "prediction"),
            (truth * valid, "ground truth"),
            (diff, "difference"),
            (overlay, "overlay: green agree, red differ"),
        ]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(
                img,
                cmap=None if img.ndim == 3 else "viridis",
                vmin=0,
                vmax=max(k - 1, 1) if c < 2 else 1,
                interpolation="nearest",
            )
            ax.set_axis_off()
            ax.set_title(title if r == 0 and c > 0 else "", fontsize=9)
        axes[r, 0].set_title(
            f"prediction: {name}\nIoU {iou:.3f}, typicality {score:.2f}", fontsize=8, loc="left"
        )
    return png(fig)


def least_typical(result: dict[str, Any], n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` least typical predictions of an output-QC result."""
    return sorted(result["images"], key=lambda r: r["score"])[:n]
