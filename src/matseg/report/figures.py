"""The report's charts, drawn with matplotlib from the record alone, returned as PNG bytes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from matseg.plots import class_colours, png, subplots
from matseg.record import EvaluationRecord


def iou_by_combination(record: EvaluationRecord, split: str = "test") -> bytes | None:
    """Per dataset: test macro IoU of each encoder + decoder with its bootstrap 95% interval."""
    datasets = [d.name for d in record.datasets]
    if not datasets:
        return None
    fig, axes = subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        jobs = [j for j in record.jobs if j.dataset == name and split in j.evaluations]
        labels, values, lows, highs, colours = [], [], [], [], []
        decoders = sorted({j.decoder for j in jobs})
        palette = dict(zip(decoders, class_colours(10), strict=False))
        for j in jobs:
            ev = j.evaluations[split]
            if ev.macro_iou is None:
                continue
            lo, hi = (ev.ci.get("macro_iou") or [None, None])[:2]
            labels.append(f"{j.encoder}\n{j.decoder}" + (f"\nseed {j.seed}" if j.seed else ""))
            values.append(ev.macro_iou)
            lows.append(ev.macro_iou - lo if lo is not None else 0.0)
            highs.append(hi - ev.macro_iou if hi is not None else 0.0)
            colours.append(palette[j.decoder])
        x = np.arange(len(values))
        ax.bar(x, values, yerr=[lows, highs], capsize=3, color=colours)
        majority = [
            j.evaluations[split].baselines.get("majority class", {}).get("macro_iou") for j in jobs
        ]
        if majority and majority[0] is not None:
            ax.axhline(majority[0], color="grey", ls="--", lw=1, label="majority class")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{split} macro IoU (95% CI)", fontsize=8)
        ax.set_title(name, fontsize=9)
    return png(fig)


def training_curves(record: EvaluationRecord) -> bytes | None:
    """Validation IoU and training loss per epoch of every job, one panel per dataset."""
    datasets = [d.name for d in record.datasets]
    if not any(j.curves for j in record.jobs):
        return None
    fig, axes = subplots(2, len(datasets), figsize=(4.5 * len(datasets), 5), squeeze=False)
    for col, name in enumerate(datasets):
        for j in (j for j in record.jobs if j.dataset == name and j.curves):
            epochs = [p.epoch for p in j.curves]
            label = f"{j.encoder} + {j.decoder}" + (f" s{j.seed}" if j.seed else "")
            axes[0][col].plot(epochs, [p.val_iou for p in j.curves], label=label, lw=1)
            axes[1][col].plot(epochs, [p.train_loss for p in j.curves], label=label, lw=1)
        axes[0][col].set_title(name, fontsize=9)
        axes[0][col].set_ylabel("validation IoU", fontsize=8)
        axes[1][col].set_ylabel("training loss", fontsize=8)
        axes[1][col].set_xlabel("epoch", fontsize=8)
        axes[0][col].legend(fontsize=6)
    return png(fig)


def spread_across_contexts(record: EvaluationRecord, split: str = "test") -> bytes | None:
    """Best test IoU per dataset, and each decoder's best per dataset: the context effect."""
    best: dict[str, dict[str, float]] = defaultdict(dict)
    for j in record.jobs:
        ev = j.evaluations.get(split)
        if ev is None or ev.macro_iou is None:
            continue
        best[j.dataset][j.decoder] = max(best[j.dataset].get(j.decoder, -1.0), ev.macro_iou)
    if not best:
        return None
    names = list(best)
    decoders = sorted({d for v in best.values() for d in v})
    fig, ax = subplots(figsize=(max(4.0, 1.6 * len(names) + 2), 3.4))
    width = 0.8 / max(len(decoders), 1)
    for n, dec in enumerate(decoders):
        ax.bar(
            np.arange(len(names)) + n * width - 0.4 + width / 2,
            [best[name].get(dec, np.nan) for name in names],
            width,
            label=dec,
        )
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"best {split} macro IoU", fontsize=8)
    ax.legend(fontsize=7, title="decoder", title_fontsize=7)
    ax.set_title("IoU across contexts, by decoder", fontsize=9)
    return png(fig)
