"""The report's charts, drawn with matplotlib from the record alone, returned as PNG bytes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from matseg.plots import class_colours, png, subplots
from matseg.record import EvaluationRecord
from matseg.report.recommend import Recommendation
from matseg.results import EVIDENCE_WORDS


def iou_by_combination(record: EvaluationRecord) -> bytes | None:
    """Per dataset: each combination's IoU on the decision's evidence (out-of-fold or
    validation, pooled, bootstrap 95% CI) as bars, its test IoU (scored once, after the choice)
    as a black mark, and the better constant baseline as a dashed line."""
    decisions = record.decisions
    if not decisions:
        return None
    tests: dict[tuple[str, str], float] = {}
    for e in record.ensembles:
        ev = e.evaluations.get("test")
        if ev is not None and ev.macro_iou is not None:
            tests[(e.dataset, e.name)] = ev.macro_iou
    fig, axes = subplots(1, len(decisions), figsize=(4.5 * len(decisions), 3.6), squeeze=False)
    for ax, d in zip(axes[0], decisions, strict=True):
        palette = dict(zip(sorted({e.decoder for e in d.ranking}), class_colours(10), strict=False))
        x = np.arange(len(d.ranking))
        values = [e.macro_iou if e.macro_iou is not None else np.nan for e in d.ranking]
        lows = [v - (e.macro_iou_ci[0] if e.macro_iou_ci[0] is not None else v)
                for v, e in zip(values, d.ranking, strict=True)]  # fmt: skip
        highs = [(e.macro_iou_ci[1] if e.macro_iou_ci[1] is not None else v) - v
                 for v, e in zip(values, d.ranking, strict=True)]  # fmt: skip
        ax.bar(x, values, yerr=[lows, highs], capsize=3,
               color=[palette[e.decoder] for e in d.ranking])  # fmt: skip
        marks = [(i, tests[(d.dataset, e.name)]) for i, e in enumerate(d.ranking)
                 if (d.dataset, e.name) in tests]  # fmt: skip
        if marks:
            ax.scatter(*zip(*marks, strict=True), marker="_", s=300, color="black", zorder=3,
                       label="test (not used for any choice)")  # fmt: skip
        ax.axhline(max(d.baselines.values()), color="grey", ls="--", lw=1, label="constant")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(x, [f"{e.encoder}\n{e.decoder}" for e in d.ranking], fontsize=7)
        ax.set_ylim(0, 1)
        where = EVIDENCE_WORDS[d.evidence]
        ax.set_ylabel(f"{where} macro IoU (95% CI)", fontsize=8)
        ax.set_title(d.dataset, fontsize=9)
    return png(fig)


def evidence_differences(record: EvaluationRecord) -> bytes | None:
    """Per dataset: the per-image IoU difference, best minus each other combination, one dot
    per evidence image, with the mean, its paired bootstrap CI and the tie margin: where one
    architecture wins and where it loses."""
    decisions = [d for d in record.decisions if len(d.ranking) > 1]
    if not decisions:
        return None
    fig, axes = subplots(1, len(decisions), figsize=(4.5 * len(decisions), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, d in zip(axes[0], decisions, strict=True):
        best = np.asarray(d.per_image[d.ranking[0].name])
        others = d.ranking[1:]
        for i, e in enumerate(others):
            diff = best - np.asarray(d.per_image[e.name])
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(diff)), diff, s=9, alpha=0.6,
                       color="tab:blue")  # fmt: skip
            if e.versus_best is not None:
                lo, hi = e.versus_best.ci
                ax.errorbar(i + 0.3, diff.mean(), yerr=[[diff.mean() - lo], [hi - diff.mean()]],
                            fmt="o", color="black", capsize=3)  # fmt: skip
        ax.axhline(0, color="black", lw=0.8)
        for m in (-d.tie_margin, d.tie_margin) if d.ranked_by == "iou" else ():
            ax.axhline(m, color="grey", ls=":", lw=0.8)  # the margin is in IoU
        ax.set_xticks(np.arange(len(others)),
                      [f"vs {e.encoder}\n{e.decoder}" for e in others], fontsize=7)  # fmt: skip
        ax.set_ylabel(f"IoU difference per image ({d.ranking[0].decoder} best)", fontsize=8)
        ax.set_title(d.dataset, fontsize=9)
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


def quantities_truth_vs_prediction(rec: Recommendation) -> bytes | None:
    """Per dataset, the recommended combination's quantity on each test image against the
    ground truth's (the target, else each class's area fraction): on the line is right."""
    from matseg.report.tables import shown_quantities

    panels = []
    for d in rec.datasets:
        names = shown_quantities(d)
        if d.decision.target is None:
            names = [n for n in names if n.startswith("area_fraction:")]
        assert d.recommended is not None or not names
        for name in names:
            v = d.recommended.test_quantities[name]  # type: ignore[union-attr]
            pairs = [(t, p) for t, p in zip(v.truth, v.predicted, strict=True)
                     if t is not None and p is not None]  # fmt: skip
            if pairs:
                panels.append((d.dataset, d.use, name, v.unit, np.array(pairs)))
    if not panels:
        return None
    fig, axes = subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False)
    for ax, (dataset, combination, name, unit, xy) in zip(axes[0], panels, strict=True):
        ax.scatter(xy[:, 0], xy[:, 1], s=12, alpha=0.7, color="tab:blue")
        lo, hi = float(xy.min()), float(xy.max())
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8)
        suffix = "" if unit == "1" else f" ({unit})"
        ax.set_xlabel(f"ground truth{suffix}", fontsize=8)
        ax.set_ylabel(f"prediction{suffix}", fontsize=8)
        ax.set_title(f"{dataset}: {name}\n{combination}", fontsize=8)
    return png(fig)


def _weighted_ecdf(pairs: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    values, weights = np.asarray(pairs, dtype=float).T
    order = np.argsort(values)
    return values[order], np.cumsum(weights[order]) / weights.sum()


def size_distributions(rec: Recommendation) -> bytes | None:
    """Per dataset and feature class, the recommended combination's feature-size distribution
    on the test images over the ground truth's (border-weighted cumulative distributions):
    merged or split particles show as a shift that IoU does not."""
    panels = []
    for d in rec.datasets:
        if d.recommended is None:
            continue
        for name, v in d.recommended.test_quantities.items():
            both = v.truth_distribution and v.predicted_distribution
            if name.startswith("feature_size:") and both:
                panels.append((d.dataset, d.use, name, v))
    if not panels:
        return None
    fig, axes = subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (dataset, combination, name, v) in zip(axes[0], panels, strict=True):
        for pairs, label, colour in (
            (v.truth_distribution, "ground truth", "black"),
            (v.predicted_distribution, "prediction", "tab:orange"),
        ):
            x, y = _weighted_ecdf(pairs)
            ax.step(x, y, where="post", label=f"{label} ({len(pairs)})", color=colour, lw=1.2)
        ax.set_xscale("log")
        ax.set_xlabel(f"equivalent circular diameter ({v.unit})", fontsize=8)
        ax.set_ylabel("cumulative share of features", fontsize=8)
        ax.set_title(f"{dataset}: {name.split(':', 1)[1]}\n{combination}", fontsize=8)
        ax.legend(fontsize=7)
    return png(fig)
