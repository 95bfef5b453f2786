"""Every segmentation number from one confusion matrix per image.

A model's test predictions are reduced once, image by image, to ``(K, K)`` int64 confusion
matrices (rows = true class, columns = predicted class; pixels whose target equals
``ignore_index`` are not counted). Every score below is a function of those matrices, so the
per-image numbers, the dataset numbers, the bootstrap intervals and the trivial baselines can
never disagree about which pixels were counted.

Per class ``c`` of a confusion matrix ``cm``: ``TP_c = cm[c, c]``, ``FP_c = sum(cm[:, c]) - TP_c``,
``FN_c = sum(cm[c, :]) - TP_c``.

- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` and ``Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``.
- **Policy for absent classes.** A class absent from both target and prediction (union 0) has an
  *undefined* IoU and Dice: NaN, never a silent 1.0 (which would reward an empty prediction on an
  empty image) nor 0.0 (which would punish a correct one). Means over classes skip NaN, so such a
  class is excluded from that image's mean; a mean with no defined class is NaN.
- **Dataset numbers are pooled**: they are computed from the sum of the per-image confusion
  matrices, so a class is defined whenever it occurs (in target or prediction) anywhere in the
  test set, and large images weigh by their pixel count. Per-image means are reported beside them.
- ``macro_iou`` = mean over classes of the (pooled) per-class IoU; ``macro_dice`` likewise.
- ``micro_iou`` = ``sum_c TP_c / sum_c (TP_c + FP_c + FN_c)``: every class's counts pooled before
  dividing. (With one label per pixel this is ``correct / (correct + 2 * wrong)``.)
- ``pixel_accuracy`` = ``trace(cm) / sum(cm)``.
- ``weighted_iou`` = the paper's eq. 3, ``sum_c w_c IoU_c``, where ``w_c`` is the pixel frequency
  of class ``c`` in the *training* split (passed in), renormalised to sum 1 over the classes
  whose IoU is defined. (Not torchmetrics' ``average="weighted"``, which weighs by test support.)
- ``foreground_iou`` = mean IoU over classes ``1 .. K-1`` (class 0 is background by convention);
  for a binary task this is exactly the IoU of class 1.

Intervals are percentile bootstrap 95% CIs over test *images*: images are resampled with
replacement (``numpy.random.default_rng(seed)``), the resample's confusion matrices are summed,
and the pooled metric is recomputed; resamples in which a metric is undefined are left out of
its interval.

Trivial baselines (one class predicted everywhere) are scored on the same test pixels, because
they can look good: on tiles that are 85% foreground, "all foreground" has a foreground IoU of 0.85.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from matseg.errors import MatsegError

if TYPE_CHECKING:
    import torch

    ClassIds = np.ndarray | torch.Tensor
else:
    ClassIds = Any

CI_LEVEL = 0.95
_BOOT_BLOCK = 4_000_000  # resample-by-image count entries per bootstrap block (bounds memory)
SUMMARY_METRICS = (
    "macro_iou",
    "micro_iou",
    "macro_dice",
    "pixel_accuracy",
    "foreground_iou",
    "weighted_iou",
)


class MetricsError(MatsegError):
    """Arrays handed to a metric (predictions, targets, confusion matrices) cannot be scored."""


# --- confusion matrices ---------------------------------------------------------------------


def _is_tensor(x: object) -> bool:
    """True for a torch tensor, without importing torch (it is only loaded if the caller did)."""
    torch_mod = sys.modules.get("torch")
    return torch_mod is not None and isinstance(x, torch_mod.Tensor)


def _check_num_classes(where: str, num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise MetricsError(where, "num_classes as an int", repr(num_classes))
    if num_classes < 1:
        raise MetricsError(where, "num_classes >= 1", str(num_classes))


def _check_ids_dtype(where: str, name: str, dtype_text: str, is_integer: bool) -> None:
    if not is_integer:
        raise MetricsError(
            f"{where}: {name}",
            "integer class ids",
            f"dtype {dtype_text}",
            "pass argmax class ids, not scores or probabilities",
        )


def _range_error(where: str, name: str, num_classes: int, bad: list[int], n_bad: int) -> None:
    hint = (
        "predictions must come from a model with num_classes outputs"
        if name == "pred"
        else "targets must be class ids below num_classes or the ignore_index"
    )
    raise MetricsError(
        f"{where}: {name}",
        f"class ids in [0, {num_classes})",
        f"{n_bad} counted pixel(s) with values such as {bad[:5]}",
        hint,
    )


def _numpy_confusions(
    preds: np.ndarray, targets: np.ndarray, num_classes: int, ignore_index: int | None, where: str
) -> np.ndarray:
    """(N, P) id arrays -> (N, K, K) int64 via one ``np.bincount`` over image-offset indices."""
    for name, arr in (("pred", preds), ("target", targets)):
        ok = np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
        _check_ids_dtype(where, name, str(arr.dtype), ok)
    n, k = preds.shape[0], num_classes
    p = preds.astype(np.int64, copy=False)
    t = targets.astype(np.int64, copy=False)
    keep = t != ignore_index if ignore_index is not None else np.ones(t.shape, dtype=bool)
    for name, arr in (("target", t), ("pred", p)):
        counted = arr[keep]
        bad = (counted < 0) | (counted >= k)
        if bad.any():
            _range_error(where, name, k, np.unique(counted[bad]).tolist(), int(bad.sum()))
    idx = (np.arange(n, dtype=np.int64)[:, None] * (k * k) + t * k + p)[keep]
    return np.bincount(idx, minlength=n * k * k).reshape(n, k, k).astype(np.int64, copy=False)


def _torch_confusions(
    preds: ClassIds, targets: ClassIds, num_classes: int, ignore_index: int | None, where: str
) -> torch.Tensor:
    """(N, P) id tensors -> (N, K, K) int64 on their device via one ``torch.bincount``."""
    import torch

    device = preds.device if _is_tensor(preds) else targets.device
    ids = []
    for name, arr in (("pred", preds), ("target", targets)):
        if _is_tensor(arr):
            ok = not (arr.dtype.is_floating_point or arr.dtype.is_complex)
            _check_ids_dtype(where, name, str(arr.dtype), ok)
            ids.append(arr.to(device=device, dtype=torch.int64))
        else:  # a numpy side of a mixed pair joins the tensor's device
            ok = np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
            _check_ids_dtype(where, name, str(arr.dtype), ok)
            ids.append(torch.as_tensor(arr.astype(np.int64), device=device))
    p, t = ids
    n, k = p.shape[0], num_classes
    keep = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
    for name, arr in (("target", t), ("pred", p)):
        bad = keep & ((arr < 0) | (arr >= k))
        if bool(bad.any()):  # one host sync of a single flag; values are fetched only to report
            _range_error(where, name, k, torch.unique(arr[bad]).tolist(), int(bad.sum()))
    offsets = torch.arange(n, device=device, dtype=torch.int64)[:, None] * (k * k)
    idx = (offsets + t * k + p)[keep]
    return torch.bincount(idx, minlength=n * k * k).reshape(n, k, k)


def _shape(x: ClassIds) -> tuple[int, ...]:
    return tuple(x.shape) if _is_tensor(x) else np.shape(x)


def _check_same_shape(pred: ClassIds, target: ClassIds, where: str) -> None:
    if _shape(pred) != _shape(target):
        raise MetricsError(
            where,
            "pred and target of the same shape",
            f"{_shape(pred)} and {_shape(target)}",
            "squeeze a channel axis or argmax the logits over the class axis first",
        )


def _batch_confusions(
    preds: ClassIds, targets: ClassIds, num_classes: int, ignore_index: int | None, where: str
) -> np.ndarray | torch.Tensor:
    """Shared body: flatten (N, ...) inputs to (N, P) and dispatch on numpy / torch."""
    _check_num_classes(where, num_classes)
    _check_same_shape(preds, targets, where)
    n = _shape(preds)[0]
    if _is_tensor(preds) or _is_tensor(targets):
        return _torch_confusions(
            preds.reshape(n, -1) if _is_tensor(preds) else np.asarray(preds).reshape(n, -1),
            targets.reshape(n, -1) if _is_tensor(targets) else np.asarray(targets).reshape(n, -1),
            num_classes,
            ignore_index,
            where,
        )
    return _numpy_confusions(
        np.asarray(preds).reshape(n, -1),
        np.asarray(targets).reshape(n, -1),
        num_classes,
        ignore_index,
        where,
    )


def confusion_matrix(
    pred: ClassIds, target: ClassIds, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """(K, K) int64 confusion of one image: rows = true class, columns = predicted class.

    ``pred`` and ``target`` are class-id arrays or tensors of the same shape (any shape). Pixels
    whose target equals ``ignore_index`` are skipped (their prediction is not looked at); any
    other target or prediction outside ``[0, K)`` raises :class:`MetricsError`.
    """
    where = "confusion_matrix"
    _check_same_shape(pred, target, where)
    p = pred.reshape(1, -1) if _is_tensor(pred) else np.asarray(pred).reshape(1, -1)
    t = target.reshape(1, -1) if _is_tensor(target) else np.asarray(target).reshape(1, -1)
    cm = _batch_confusions(p, t, num_classes, ignore_index, where)[0]
    return cm.cpu().numpy() if _is_tensor(cm) else cm


def confusion_matrices(
    preds: ClassIds, targets: ClassIds, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray | torch.Tensor:
    """(N, K, K) int64 confusions of a batch ``(N, ...)``, one per image.

    Given a tensor, counting runs with ``torch.bincount`` on its device and returns a tensor, so
    it can run inside a training or validation step without copying every pixel to the host;
    given numpy arrays it returns a numpy array.
    """
    where = "confusion_matrices"
    if len(_shape(preds)) < 2:
        raise MetricsError(
            where, "a batch of shape (N, H, W) or (N, ...)", f"shape {_shape(preds)}"
        )
    return _batch_confusions(preds, targets, num_classes, ignore_index, where)


def target_class_counts(confusions: np.ndarray) -> np.ndarray:
    """(N, K) counted target pixels per image and class: the row sums of each confusion matrix.

    These are exactly the pixels the model was scored on, which is what a baseline needs.
    """
    cm = _as_confusion(confusions, "target_class_counts")
    return cm.sum(axis=-1).astype(np.int64)


# --- scores from a confusion matrix -----------------------------------------------------------


def _as_confusion(cm: Any, where: str) -> np.ndarray:
    """A (..., K, K) float64 array of finite non-negative counts, or a :class:`MetricsError`."""
    arr = cm.detach().cpu().numpy() if _is_tensor(cm) else np.asarray(cm)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2] or arr.shape[-1] < 1:
        raise MetricsError(where, "confusion matrices of shape (..., K, K)", f"shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MetricsError(where, "numeric pixel counts", f"dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise MetricsError(where, "finite non-negative pixel counts", "negative or non-finite")
    return arr


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (undefined, never 0 or 1)."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over defined (non-NaN) entries; NaN where none is defined (no warning)."""
    defined = ~np.isnan(x)
    return _ratio(np.where(defined, x, 0.0).sum(axis=axis), defined.sum(axis=axis))


def _tp_fp_fn(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    return tp, cm.sum(axis=-2) - tp, cm.sum(axis=-1) - tp


def iou(cm: Any) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)`` of (..., K, K) confusions; NaN where union is 0."""
    tp, fp, fn = _tp_fp_fn(_as_confusion(cm, "iou"))
    return _ratio(tp, tp + fp + fn)


def dice(cm: Any) -> np.ndarray:
    """Per-class Dice ``2 TP / (2 TP + FP + FN)`` (= F1); NaN where the class is in neither."""
    tp, fp, fn = _tp_fp_fn(_as_confusion(cm, "dice"))
    return _ratio(2 * tp, 2 * tp + fp + fn)


def pixel_accuracy(cm: Any) -> np.ndarray | float:
    """Correct / counted pixels of (..., K, K) confusions; NaN when no pixel was counted."""
    arr = _as_confusion(cm, "pixel_accuracy")
    out = _ratio(np.trace(arr, axis1=-2, axis2=-1), arr.sum(axis=(-2, -1)))
    return float(out) if out.ndim == 0 else out


def macro_iou(cm: Any) -> np.ndarray | float:
    """Mean of the defined per-class IoUs (absent-from-both classes excluded)."""
    out = _nanmean(iou(cm))
    return float(out) if out.ndim == 0 else out


def macro_dice(cm: Any) -> np.ndarray | float:
    """Mean of the defined per-class Dice scores (absent-from-both classes excluded)."""
    out = _nanmean(dice(cm))
    return float(out) if out.ndim == 0 else out


def micro_iou(cm: Any) -> np.ndarray | float:
    """``sum_c TP_c / sum_c (TP_c + FP_c + FN_c)``: counts pooled over classes, then divided."""
    tp, fp, fn = _tp_fp_fn(_as_confusion(cm, "micro_iou"))
    out = _ratio(tp.sum(axis=-1), (tp + fp + fn).sum(axis=-1))
    return float(out) if out.ndim == 0 else out


def foreground_iou(cm: Any) -> np.ndarray | float:
    """Mean IoU over classes 1..K-1 (class 0 = background); the class-1 IoU for binary tasks."""
    out = _nanmean(iou(cm)[..., 1:])
    return float(out) if out.ndim == 0 else out


def _check_weights(class_weights: Any, k: int, where: str) -> np.ndarray:
    w = np.asarray(class_weights, dtype=np.float64)
    if w.shape != (k,):
        raise MetricsError(where, f"{k} class weights (one per class)", f"shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise MetricsError(
            where,
            "finite non-negative class weights with a positive sum",
            np.array2string(w, precision=4),
            "pass the training split's pixel count or frequency per class",
        )
    return w


def weighted_iou(cm: Any, class_weights: Any) -> np.ndarray | float:
    """The paper's eq. 3: ``sum_c w_c IoU_c`` with ``w`` the training-split class frequencies.

    Weights are renormalised to sum 1 over the classes whose IoU is defined in ``cm`` (so an
    undefined class neither counts as 0 nor as 1); NaN when no weighted class is defined.
    """
    scores = iou(cm)
    w = _check_weights(class_weights, scores.shape[-1], "weighted_iou")
    defined = ~np.isnan(scores)
    wd = np.where(defined, w, 0.0)
    out = _ratio((wd * np.where(defined, scores, 0.0)).sum(axis=-1), wd.sum(axis=-1))
    return float(out) if out.ndim == 0 else out


def _summaries(cm: np.ndarray, class_weights: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every summary metric of (..., K, K) confusions (pooled, per image or per resample)."""
    out = {
        "macro_iou": np.asarray(macro_iou(cm)),
        "micro_iou": np.asarray(micro_iou(cm)),
        "macro_dice": np.asarray(macro_dice(cm)),
        "pixel_accuracy": np.asarray(pixel_accuracy(cm)),
        "foreground_iou": np.asarray(foreground_iou(cm)),
    }
    if class_weights is not None:
        out["weighted_iou"] = np.asarray(weighted_iou(cm, class_weights))
    else:
        out["weighted_iou"] = np.full(cm.shape[:-2], np.nan)
    return out


# --- bootstrap --------------------------------------------------------------------------------


def bootstrap_confusions(confusions: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, K, K) pooled confusions of image resamples drawn with replacement.

    Each resample draws N image indices; their multiplicities (one ``bincount``) times the
    flattened (N, K*K) confusions give the summed matrix, so no pixel and no image is looped over.
    """
    cm = _as_confusion(confusions, "bootstrap_confusions")
    n, k = cm.shape[0], cm.shape[-1]
    flat = cm.reshape(n, k * k)
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, k * k))
    block = max(1, _BOOT_BLOCK // n)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        rows = np.arange(b, dtype=np.int64)[:, None] * n
        counts = np.bincount((rows + idx).ravel(), minlength=b * n).reshape(b, n)
        out[start : start + b] = counts @ flat
    return out.reshape(n_boot, k, k)


def pooled_difference(
    reference: np.ndarray, models: Sequence[np.ndarray], n_boot: int, seed: int
) -> tuple[float, float, float]:
    """Pooled macro IoU of ``models`` (their mean, each scored on the same M images: (M, K, K)
    confusions) minus that of ``reference`` ((N, K, K), other images), with a percentile 95% CI.

    The two image sets are independent samples, so each is resampled on its own: one draw of M
    indices, shared by every model (they saw the same images), and one of N. This is the
    interval of "test estimate minus out-of-fold estimate" under image sampling alone; NaN where
    a pooled IoU is undefined.
    """
    ref = _as_confusion(reference, "pooled_difference")
    stacked = np.stack([_as_confusion(m, "pooled_difference") for m in models])  # (P, M, K, K)
    point = float(np.mean(macro_iou(stacked.sum(axis=1))) - macro_iou(ref.sum(axis=0)))
    ref_boot = np.asarray(macro_iou(bootstrap_confusions(ref, n_boot, seed)))
    n_models, m, k = stacked.shape[0], stacked.shape[1], stacked.shape[-1]
    idx = np.random.default_rng(seed + 1).integers(0, m, size=(n_boot, m))
    counts = np.stack([np.bincount(row, minlength=m) for row in idx]).astype(float)  # (B, M)
    flat = stacked.reshape(n_models, m, k * k)
    resampled = np.einsum("bm,pmc->bpc", counts, flat).reshape(n_boot, n_models, k, k)
    model_boot = np.asarray(macro_iou(resampled)).mean(axis=1)
    lo, hi = _percentile_ci(model_boot - ref_boot)
    return point, float(lo), float(hi)


def _percentile_ci(values: np.ndarray) -> np.ndarray:
    """(B, ...) resampled values -> (..., 2) percentile interval over defined resamples."""
    tail = (1.0 - CI_LEVEL) / 2 * 100
    flat = values.reshape(values.shape[0], -1)
    ci = np.full((flat.shape[1], 2), np.nan)
    for j in range(flat.shape[1]):
        col = flat[:, j][~np.isnan(flat[:, j])]
        if col.size:
            ci[j] = np.percentile(col, [tail, 100 - tail])
    return ci.reshape(*values.shape[1:], 2)


# --- scores of a set of images ----------------------------------------------------------------


def _frozen(x: np.ndarray) -> np.ndarray:
    x = np.array(x, copy=True)
    x.flags.writeable = False
    return x


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _json_list(x: np.ndarray) -> Any:
    if x.ndim == 0:
        return _json_float(float(x))
    return [_json_list(v) for v in x]


@dataclass(frozen=True)
class SegmentationScores:
    """All scores of one model (or baseline) on one set of test images, from their confusions.

    Dataset numbers are pooled over images (see the module docstring); ``per_image_*`` arrays
    hold the same metrics image by image (NaN where undefined); ``ci`` maps a metric name to its
    bootstrap 95% interval (``(nan, nan)`` when it is undefined in every resample; absent when
    ``n_boot`` is 0, and ``weighted_iou`` absent without class weights).
    """

    classes: list[str]
    n_images: int
    confusion: np.ndarray  # (K, K) int64, pooled over images
    iou_per_class: np.ndarray  # (K,)
    dice_per_class: np.ndarray  # (K,)
    macro_iou: float
    micro_iou: float
    macro_dice: float
    pixel_accuracy: float
    foreground_iou: float
    weighted_iou: float  # NaN when no class weights were given
    class_weights: np.ndarray | None  # as given (training-split frequencies or counts)
    per_image_iou: np.ndarray  # (N, K)
    per_image_dice: np.ndarray  # (N, K)
    per_image_macro_iou: np.ndarray  # (N,)
    per_image_micro_iou: np.ndarray
    per_image_macro_dice: np.ndarray
    per_image_pixel_accuracy: np.ndarray
    per_image_foreground_iou: np.ndarray
    per_image_weighted_iou: np.ndarray
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    iou_per_class_ci: np.ndarray | None = None  # (K, 2), None when n_boot is 0
    n_boot: int = 0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-class values keyed by class name, NaN written as ``None``."""

        def by_class(values: np.ndarray) -> dict[str, Any]:
            return {c: _json_list(v) for c, v in zip(self.classes, values, strict=True)}

        out: dict[str, Any] = {
            "classes": list(self.classes),
            "n_images": self.n_images,
            "confusion": self.confusion.astype(int).tolist(),
            "iou_per_class": by_class(self.iou_per_class),
            "dice_per_class": by_class(self.dice_per_class),
        }
        for name in SUMMARY_METRICS:
            out[name] = _json_float(getattr(self, name))
        out["class_weights"] = None if self.class_weights is None else by_class(self.class_weights)
        out["per_image"] = {
            "iou": _json_list(self.per_image_iou),
            "dice": _json_list(self.per_image_dice),
            **{name: _json_list(getattr(self, f"per_image_{name}")) for name in SUMMARY_METRICS},
        }
        out["ci"] = {name: [_json_float(lo), _json_float(hi)] for name, (lo, hi) in self.ci.items()}
        out["iou_per_class_ci"] = (
            None if self.iou_per_class_ci is None else by_class(self.iou_per_class_ci)
        )
        out["bootstrap"] = {"n_boot": self.n_boot, "seed": self.seed, "level": CI_LEVEL}
        return out


def _check_confusions(confusions: Any, classes: list[str], where: str) -> np.ndarray:
    cm = _as_confusion(confusions, where)
    if cm.ndim != 3 or cm.shape[0] < 1:
        raise MetricsError(where, "confusions of shape (N, K, K) with N >= 1", f"shape {cm.shape}")
    if cm.shape[-1] != len(classes):
        raise MetricsError(
            where, f"{cm.shape[-1]} class names (K of the confusions)", f"{len(classes)} names"
        )
    if len(set(classes)) != len(classes):
        raise MetricsError(where, "distinct class names", str(classes))
    if (cm != np.round(cm)).any():
        raise MetricsError(where, "whole pixel counts", "fractional counts")
    return cm


def score_images(
    confusions: np.ndarray,
    classes: list[str],
    class_weights: np.ndarray | None,
    n_boot: int = 1000,
    seed: int = 0,
) -> SegmentationScores:
    """Score N test images from their (N, K, K) confusions: pooled, per image, bootstrap CIs.

    ``class_weights`` are the training split's class pixel frequencies (or counts) for the
    weighted IoU; ``None`` leaves it NaN. ``n_boot`` resamples of the images (seeded by
    ``seed``) give the 95% intervals; 0 skips them.
    """
    where = "score_images"
    cm = _check_confusions(confusions, classes, where)
    k = cm.shape[-1]
    weights = None if class_weights is None else _check_weights(class_weights, k, where)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise MetricsError(where, "n_boot as an int >= 0", repr(n_boot))
    pooled = cm.sum(axis=0)
    point = _summaries(pooled, weights)
    per_image = _summaries(cm, weights)
    ci: dict[str, tuple[float, float]] = {}
    iou_ci = None
    if n_boot > 0:
        boot = bootstrap_confusions(cm, n_boot, seed)
        for name, values in _summaries(boot, weights).items():
            if name == "weighted_iou" and weights is None:
                continue
            lo, hi = _percentile_ci(values)
            ci[name] = (float(lo), float(hi))
        iou_ci = _frozen(_percentile_ci(iou(boot)))
    return SegmentationScores(
        classes=list(classes),
        n_images=cm.shape[0],
        confusion=_frozen(pooled.astype(np.int64)),
        iou_per_class=_frozen(iou(pooled)),
        dice_per_class=_frozen(dice(pooled)),
        **{name: float(point[name]) for name in SUMMARY_METRICS},
        class_weights=None if weights is None else _frozen(weights),
        per_image_iou=_frozen(iou(cm)),
        per_image_dice=_frozen(dice(cm)),
        **{f"per_image_{name}": _frozen(per_image[name]) for name in SUMMARY_METRICS},
        ci=ci,
        iou_per_class_ci=iou_ci,
        n_boot=int(n_boot),
        seed=int(seed),
    )


# --- trivial baselines ------------------------------------------------------------------------


def baseline_confusions(target_class_counts: np.ndarray, predicted_class: int) -> np.ndarray:
    """(N, K, K) confusions of predicting ``predicted_class`` at every counted pixel.

    Every pixel lands in column ``predicted_class``, so that column is the per-class target
    count of each image and the rest is zero.
    """
    where = "baseline_confusions"
    counts = np.asarray(target_class_counts)
    if counts.ndim != 2 or counts.shape[1] < 1:
        raise MetricsError(where, "target class counts of shape (N, K)", f"shape {counts.shape}")
    numeric = np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)
    if not numeric or not np.isfinite(counts).all() or (counts < 0).any():
        raise MetricsError(where, "non-negative pixel counts", "non-numeric, negative or NaN")
    if (counts != np.round(counts)).any():
        raise MetricsError(where, "whole pixel counts", "fractional counts")
    k = counts.shape[1]
    if not 0 <= predicted_class < k:
        raise MetricsError(where, f"a predicted class in [0, {k})", str(predicted_class))
    out = np.zeros((counts.shape[0], k, k), dtype=np.int64)
    out[:, :, predicted_class] = counts
    return out


def majority_class(train_class_frequencies: np.ndarray) -> int:
    """The class with most training pixels (lowest id on a tie): the majority baseline's guess."""
    freq = _check_weights(
        train_class_frequencies, np.asarray(train_class_frequencies).size, "majority_class"
    )
    return int(np.argmax(freq))


def baselines(
    target_class_counts: np.ndarray,
    train_frequencies: np.ndarray,
    classes: list[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, SegmentationScores]:
    """Scores of constant predictions on the same test pixels as the model.

    ``"majority class"`` predicts the training split's most frequent class everywhere; binary
    tasks also get ``"all foreground"`` (class 1 everywhere). Use
    :func:`target_class_counts` on the model's confusions for ``target_class_counts``.
    """
    counts = np.asarray(target_class_counts)
    out = {
        "majority class": score_images(
            baseline_confusions(counts, majority_class(train_frequencies)),
            classes,
            train_frequencies,
            n_boot,
            seed,
        )
    }
    if len(classes) == 2:
        out["all foreground"] = score_images(
            baseline_confusions(counts, 1), classes, train_frequencies, n_boot, seed
        )
    return out
