"""What a finished job wrote (:class:`JobResult`, its ``metrics.json``) and the results tables
built from finished jobs: the paper's Table 3 (every job) and Table 2 (best per dataset).

``results.csv`` has one row per job and evaluated split (``test``, and shift sets such as
``different_test``), with confidence intervals and the trivial baselines on the same images.
``best.csv`` picks, per dataset, the combination with the best VALIDATION IoU (the test split is
never used for a choice) and shows its test numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matseg.plan import Job, content_hash
from matseg.quantities import mean_ci
from matseg.selection import TIE_MARGIN

CONVERGENCE_GAIN = TIE_MARGIN  # IoU gained late in training that still counts as "rising"
OOF = "oof"  # the split name of a fold's held-out (out-of-fold) evaluation
# The split a decision was made on, in words.
EVIDENCE_WORDS = {OOF: "out-of-fold", "val": "validation", "test": "test"}

Number = float | None  # NaN is written as NaN by the jobs; JSON null reads as None


class _Result(BaseModel):
    # unknown keys are kept, so a file written by a newer matseg still opens here
    model_config = ConfigDict(extra="allow")


class Bootstrap(_Result):
    n_boot: int = 0
    seed: int = 0
    level: float = 0.95


class PerImage(_Result):
    """The metrics image by image (rows in the order of the split's images)."""

    iou: list[list[Number]] = Field(default_factory=list)
    dice: list[list[Number]] = Field(default_factory=list)
    macro_iou: list[Number] = Field(default_factory=list)
    micro_iou: list[Number] = Field(default_factory=list)
    macro_dice: list[Number] = Field(default_factory=list)
    pixel_accuracy: list[Number] = Field(default_factory=list)
    foreground_iou: list[Number] = Field(default_factory=list)
    weighted_iou: list[Number] = Field(default_factory=list)


class Scores(_Result):
    """``metrics.SegmentationScores.to_dict()``: pooled scores, per-class, per-image, CIs."""

    classes: list[str]
    n_images: int
    confusion: list[list[int]]
    iou_per_class: dict[str, Number]
    dice_per_class: dict[str, Number]
    macro_iou: Number
    micro_iou: Number
    macro_dice: Number
    pixel_accuracy: Number
    foreground_iou: Number
    weighted_iou: Number
    class_weights: dict[str, Number] | None = None
    per_image: PerImage = Field(default_factory=PerImage)
    ci: dict[str, list[Number]] = Field(default_factory=dict)
    iou_per_class_ci: dict[str, list[Number]] | None = None
    bootstrap: Bootstrap = Field(default_factory=Bootstrap)

    def interval(self, name: str) -> tuple[Number, Number]:
        """The bootstrap 95% interval of a metric, (None, None) when it has none."""
        low_high = self.ci.get(name)
        return (low_high[0], low_high[1]) if low_high else (None, None)


class ImageRef(_Result):
    key: str
    source: str = ""


class QuantityValues(_Result):
    """One microstructure quantity of one class (:mod:`matseg.quantities`) on each evaluated
    image, on the ground truth and on the prediction (aligned with the split's images); for a
    feature quantity also the distance between the two distributions on that image."""

    unit: str
    truth: list[Number]
    predicted: list[Number]
    ks: list[Number] = Field(default_factory=list)
    wasserstein: list[Number] = Field(default_factory=list)
    # feature sizes of the split's test and shift images, pooled (value, border weight) pairs:
    # the size distributions of truth and prediction (not kept for out-of-fold or validation)
    truth_distribution: list[list[float]] = Field(default_factory=list)
    predicted_distribution: list[list[float]] = Field(default_factory=list)


class SplitResult(_Result):
    """The ONE evaluation of a job on a split: scores, baselines on the same images, confusions,
    and the microstructure quantities of truth and prediction (absent before 0.3.1)."""

    n_images: int
    images: list[ImageRef]
    scores: Scores
    baselines: dict[str, Scores] = Field(default_factory=dict)
    confusions: list[list[list[int]]] = Field(default_factory=list)
    quantities: dict[str, QuantityValues] = Field(
        default_factory=dict, description="'quantity:class' -> values per image"
    )


class WeightsLoaded(_Result):
    """Where the encoder's weights came from (``models.WeightReport``)."""

    source: str
    encoder_tensors_loaded: int = 0
    encoder_tensors_total: int = 0
    parameters: int = 0
    note: str = ""


class JobProvenance(_Result):
    matseg: str = ""
    torch: str = ""
    python: str = ""
    machine: str = ""
    processor: str = ""
    threads: int | None = None


class FoldImages(_Result):
    """The images of a cross-validation job's fold, by key: what it trained on, stopped early
    on, and held out (kept so that anyone can check the folds were disjoint)."""

    name: str
    train: list[str]
    inner_val: list[str]
    held_out: list[str]

    @classmethod
    def of(cls, fold: Any) -> FoldImages:
        """From a :class:`matseg.datasets.folds.Fold`."""
        return cls(
            name=fold.name,
            train=list(fold.train),
            inner_val=list(fold.inner_val),
            held_out=list(fold.held_out),
        )


def late_gain(val_iou: list[float]) -> float | None:
    """How much validation IoU rose in the last quarter of the epochs run (at least the last
    epoch): its best there minus its best before; None with fewer than two epochs."""
    values = [v for v in val_iou if v == v]  # NaN-free
    if len(values) < 2:
        return None
    tail = max(1, len(values) // 4)
    return float(max(values[-tail:]) - max(values[:-tail]))


def converged(stopped_by: str, epochs: int, best_epoch: int, gain: float | None = None) -> bool:
    """Whether training had settled when it stopped.

    Early stopping means it had (validation IoU stopped improving for ``patience`` epochs). A
    budget (``max_epochs`` or ``max_minutes``) stopped it while validation IoU was still rising
    when, in the last quarter of the epochs run, it rose by ``CONVERGENCE_GAIN`` (the tie margin:
    less would not change any verdict) or more (``gain``, :func:`late_gain`). Results written
    before matseg 0.3 have no gain: there a best epoch among that last quarter means rising.
    """
    if stopped_by == "early stopping":
        return True
    if gain is not None:
        return gain < CONVERGENCE_GAIN
    return best_epoch < epochs - max(1, epochs // 4)


class JobResult(_Result):
    """What a finished job wrote as ``metrics.json``; results, the record and QC read it back.

    ``in_channels`` is absent in run folders written before 0.2 (the model's first layer tells).
    """

    job: Job
    classes: list[str]
    in_channels: int | None = None
    weights: WeightsLoaded
    parameters: int
    latency_ms_256: Number = None
    epochs: int
    best_epoch: int
    best_val_iou: Number
    stopped_by: str
    train_seconds: Number = None
    train_class_frequencies: list[float] = Field(default_factory=list)
    # 'quantity:class' -> mean over the training images' ground truth (the constant baseline)
    train_quantities: dict[str, Number] = Field(default_factory=dict)
    evaluations: dict[str, SplitResult] = Field(default_factory=dict)
    provenance: JobProvenance = Field(default_factory=JobProvenance)
    fold: FoldImages | None = None  # cross-validation jobs only
    late_val_gain: Number = None  # validation IoU gained in the last quarter of the epochs

    @property
    def converged(self) -> bool:
        """False when a budget stopped training while validation IoU was still rising."""
        return converged(self.stopped_by, self.epochs, self.best_epoch, self.late_val_gain)


class SelectionGap(_Result):
    """Is the test estimate what the out-of-fold estimate promised? Single fold models on the
    test images against the same models on their held-out images (like against like: the
    ensemble's own gain is apart), with a 95% CI from resampling both image sets."""

    out_of_fold: Number  # pooled macro IoU of the fold models on their held-out images
    members_test: Number  # pooled test macro IoU of each fold model alone, averaged
    ensemble_test: Number  # pooled test macro IoU of the fold ensemble
    difference: Number  # members_test - out_of_fold
    ci: list[Number]  # its 95% interval under image sampling
    out_of_fold_images: int
    test_images: int

    @property
    def consistent(self) -> bool | None:
        """True when image sampling alone explains the difference (its CI holds 0)."""
        lo, hi = self.ci
        return None if lo is None or hi is None else bool(lo <= 0.0 <= hi)


class EnsembleResult(_Result):
    """The fold models of one combination, scored together once on the test split and shift
    sets at the end of a cross-validated run (``ensembles/<hash>/metrics.json``).

    The decision was made before, on out-of-fold evidence; these numbers are the honest
    estimate for the recommended combination and, for the others, a table entry that was not
    used for any choice. ``members_macro_iou``: each fold model alone on the same splits, to
    tell whether the ensemble beats a single fold model.
    """

    hash: str
    dataset: str
    encoder: str
    decoder: str
    weights: str
    members: list[str]
    classes: list[str]
    evaluations: dict[str, SplitResult] = Field(default_factory=dict)
    members_macro_iou: dict[str, dict[str, Number]] = Field(
        default_factory=dict, description="split -> member job hash -> its macro IoU alone"
    )
    members_per_image: dict[str, list[Number]] = Field(
        default_factory=dict, description="split -> per-image macro IoU, mean of the members"
    )
    selection_gap: SelectionGap | None = None  # test vs out-of-fold (absent before 0.3.1)


def fold_groups(results: Sequence[JobResult]) -> dict[tuple[str, str, str, str], list[JobResult]]:
    """Cross-validation jobs by combination (dataset, encoder, decoder, weights), plan order."""
    groups: dict[tuple[str, str, str, str], list[JobResult]] = defaultdict(list)
    for r in results:
        if r.job.fold is not None and r.job.final:
            groups[r.job.combination].append(r)
    return dict(groups)


def ensemble_hash(members: Sequence[JobResult]) -> str:
    """The ensemble's name: a hash of its members' job hashes (a new fold, a new ensemble)."""
    return content_hash(sorted(r.job.hash for r in members))


ENSEMBLE = "ensemble-"  # the prefix of a fold ensemble's name


def ensemble_name(members: Sequence[JobResult]) -> str:
    """``ensemble-<hash>``: what names a fold ensemble wherever a job hash is accepted."""
    return ENSEMBLE + ensemble_hash(members)


COLUMNS = [
    "dataset", "split", "encoder", "decoder", "weights", "seed", "fold",
    "macro_iou", "macro_iou_low", "macro_iou_high",
    "foreground_iou", "foreground_iou_low", "foreground_iou_high",
    "dice", "pixel_accuracy", "weighted_iou", "iou_per_class",
    "baseline_majority_iou", "baseline_all_foreground_iou",
    "best_val_iou", "epochs", "best_epoch", "stopped_by", "converged", "train_seconds",
    "parameters", "latency_ms_256", "n_images", "job",
    "target", "target_unit", "target_truth", "target_predicted", "target_bias",
    "target_abs_error", "target_abs_error_low", "target_abs_error_high",
]  # fmt: skip


def target_cells(ev: SplitResult, target: str | None) -> dict[str, Any]:
    """The task's target quantity on a split's images: mean truth and prediction, bias and
    mean absolute error with its bootstrap 95% CI (empty cells without a target)."""
    values = ev.quantities.get(target) if target else None
    if values is None:
        return {"target": target or ""}
    truth = np.array(values.truth, dtype=float)
    predicted = np.array(values.predicted, dtype=float)
    error = predicted - truth  # mean_ci leaves out images where either is undefined
    bias, _ = mean_ci(error)
    mae, (low, high) = mean_ci(np.abs(error))
    return {
        "target": target, "target_unit": values.unit,
        "target_truth": float(np.nanmean(truth)) if np.isfinite(truth).any() else None,
        "target_predicted": float(np.nanmean(predicted)) if np.isfinite(predicted).any() else None,
        "target_bias": bias, "target_abs_error": mae,
        "target_abs_error_low": low, "target_abs_error_high": high,
    }  # fmt: skip


def job_rows(result: JobResult, target: str | None = None) -> list[dict[str, Any]]:
    """One row per evaluated split of a finished job (with the task's ``target`` quantity)."""
    job = result.job
    rows = []
    for split, ev in result.evaluations.items():
        s = ev.scores
        majority = ev.baselines.get("majority class")
        all_fg = ev.baselines.get("all foreground")
        low, high = s.interval("macro_iou")
        fg_low, fg_high = s.interval("foreground_iou")
        rows.append(
            {
                "dataset": job.dataset, "split": split, "encoder": job.encoder,
                "decoder": job.decoder, "weights": job.weights, "seed": job.seed,
                "fold": job.fold.name if job.fold is not None else "",
                "macro_iou": s.macro_iou, "macro_iou_low": low, "macro_iou_high": high,
                "foreground_iou": s.foreground_iou,
                "foreground_iou_low": fg_low, "foreground_iou_high": fg_high,
                "dice": s.macro_dice, "pixel_accuracy": s.pixel_accuracy,
                "weighted_iou": s.weighted_iou,
                "iou_per_class": " ".join(
                    f"{c}={'nan' if v is None or v != v else f'{v:.4f}'}"
                    for c, v in s.iou_per_class.items()
                ),
                "baseline_majority_iou": majority.macro_iou if majority else None,
                "baseline_all_foreground_iou": all_fg.foreground_iou if all_fg else None,
                "best_val_iou": result.best_val_iou, "epochs": result.epochs,
                "best_epoch": result.best_epoch, "stopped_by": result.stopped_by,
                "converged": result.converged,
                "train_seconds": result.train_seconds,
                "parameters": result.parameters,
                "latency_ms_256": result.latency_ms_256,
                "n_images": ev.n_images, "job": job.hash,
            } | target_cells(ev, target)
        )  # fmt: skip
    return rows


def results_rows(results: list[JobResult], target: str | None = None) -> list[dict[str, Any]]:
    """Table 3: one row per finished job and evaluated split, in plan order; ``target``: the
    task's quantity, whose error each row carries beside IoU."""
    return [row for result in results for row in job_rows(result, target)]


def best_rows(
    rows: list[dict[str, Any]], chosen: dict[str, tuple[str, str, str]] | None = None
) -> list[dict[str, Any]]:
    """Per dataset, the test row (out-of-fold row under cross-validation) of the job with the
    best validation IoU, among the jobs of the recommended combination when ``chosen``
    (dataset -> encoder, decoder, weights) names it."""
    chosen = chosen or {}
    split_of = {r["dataset"]: "test" for r in rows if r["split"] == "test"}
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["split"] != split_of.get(row["dataset"], OOF):
            continue
        combo = chosen.get(row["dataset"])
        if combo is not None and (row["encoder"], row["decoder"], row["weights"]) != combo:
            continue
        current = best.get(row["dataset"])
        if current is None or (row["best_val_iou"] or -1) > (current["best_val_iou"] or -1):
            best[row["dataset"]] = row
    return list(best.values())
