"""Hand-built job results with known per-image scores, for the decision and report tests."""

from __future__ import annotations

from matseg.plan import CvFold, Job
from matseg.profile import Training
from matseg.results import (
    ImageRef,
    JobResult,
    QuantityValues,
    Scores,
    SplitResult,
    WeightsLoaded,
)

A = 10_000  # true positives per class of an image's confusion


def confusion(v: float) -> list[list[int]]:
    """A two-class confusion whose both class IoUs are ``v`` (so its macro IoU is ``v``)."""
    b = round(A * (1 - v) / (2 * v))
    return [[A, b], [b, A]]


def _scores(n: int) -> Scores:
    return Scores(classes=["bg", "fg"], n_images=n, confusion=[[0, 0], [0, 0]],
                  iou_per_class={}, dice_per_class={}, macro_iou=None, micro_iou=None,
                  macro_dice=None, pixel_accuracy=None, foreground_iou=None,
                  weighted_iou=None)  # fmt: skip


def job_result(
    encoder: str,
    decoder: str,
    ious: list[float],
    params: int = 1_000_000,
    split: str = "oof",
    seed: int = 0,
    fold: int | None = 0,
    keys: list[str] | None = None,
    converged: bool = True,
    confusions: list[list[list[int]]] | None = None,
    dataset: str = "sem",
    fractions: tuple[list[float], list[float], float] | None = None,
) -> JobResult:
    """A finished job whose per-image macro IoUs on ``split`` are ``ious``; ``fractions``:
    (true, predicted, training mean) area fraction of class 'fg' on those images."""
    keys = keys or [f"img{i:02d}" for i in range(len(ious))]
    cv = None if fold is None else CvFold(folds=5, index=fold)
    job = Job(
        hash=f"{dataset}-{encoder}-{decoder}-{seed}-{fold}", dataset=dataset, encoder=encoder,
        decoder=decoder, weights="none", weights_url=None, seed=seed,
        spec={"name": dataset, "images": "x", "masks": "y"}, training=Training(), classes=None,
        fold=cv,
    )  # fmt: skip
    ev = SplitResult(
        n_images=len(ious), images=[ImageRef(key=k) for k in keys], scores=_scores(len(ious)),
        confusions=confusions if confusions is not None else [confusion(v) for v in ious],
        quantities={} if fractions is None else {
            "area_fraction:fg": QuantityValues(unit="1", truth=list(fractions[0]),
                                               predicted=list(fractions[1]))
        },
    )  # fmt: skip
    return JobResult(
        job=job, classes=["bg", "fg"], weights=WeightsLoaded(source="none"), parameters=params,
        latency_ms_256=10.0, epochs=30, best_epoch=5 if converged else 29, best_val_iou=0.5,
        stopped_by="early stopping" if converged else "max epochs",
        train_class_frequencies=[0.6, 0.4], evaluations={split: ev},
        train_quantities={} if fractions is None else {"area_fraction:fg": fractions[2]},
    )  # fmt: skip
