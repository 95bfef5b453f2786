"""Metrics from one confusion matrix: hand-computed values, torchmetrics, the NaN policy, CIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matseg.errors import MatsegError
from matseg.metrics import (
    MetricsError,
    baseline_confusions,
    baselines,
    confusion_matrices,
    confusion_matrix,
    dice,
    foreground_iou,
    iou,
    macro_iou,
    majority_class,
    micro_iou,
    pixel_accuracy,
    pooled_difference,
    score_images,
    target_class_counts,
    weighted_iou,
)

IGNORE = 255

# Hand example: 8 pixels, one ignored (target 255, predicted 2, which must not count).
TARGET = np.array([[0, 0, 1, IGNORE], [1, 2, 2, 2]])
PRED = np.array([[0, 1, 1, 2], [1, 2, 0, 2]])
# rows = true class, columns = predicted class
HAND_CM = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]])


def random_batch(
    seed: int, k: int, n: int = 3, size: int = 16, absent: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Random (n, size, size) predictions and targets with ~10% ignored target pixels.

    ``absent`` removes one class from both target and prediction (empty-vs-empty everywhere).
    """
    rng = np.random.default_rng(seed)
    draw = [c for c in range(k) if c != absent]
    target = rng.choice(draw, size=(n, size, size))
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.choice(draw, size=target.shape))
    target[rng.random(target.shape) < 0.1] = IGNORE
    return pred, target


def random_confusions(seed: int, n: int, k: int = 3) -> np.ndarray:
    """(n, k, k) confusions of images of varying quality (mostly correct, some confusion)."""
    rng = np.random.default_rng(seed)
    cm = rng.integers(0, 30, size=(n, k, k))
    cm[:, np.arange(k), np.arange(k)] += rng.integers(50, 200, size=(n, k))
    return cm


# --- hand-computed ----------------------------------------------------------------------------


def test_hand_computed_confusion_and_scores() -> None:
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, HAND_CM)
    # TP = [1, 2, 2], FP = [1, 1, 0], FN = [1, 0, 1]
    np.testing.assert_allclose(iou(cm), [1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(dice(cm), [2 / 4, 4 / 5, 4 / 5])
    assert pixel_accuracy(cm) == pytest.approx(5 / 7)
    assert micro_iou(cm) == pytest.approx(5 / 9)  # 5 TP / (5 TP + 2 FP + 2 FN)
    assert macro_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert foreground_iou(cm) == pytest.approx(2 / 3)
    # weights are training counts [6, 3, 1] -> frequencies [0.6, 0.3, 0.1]
    assert weighted_iou(cm, [6, 3, 1]) == pytest.approx(0.6 / 3 + 0.3 * 2 / 3 + 0.1 * 2 / 3)


def test_weighted_iou_renormalises_over_defined_classes() -> None:
    cm = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 2 in neither target nor prediction
    np.testing.assert_allclose(iou(cm), [1 / 2, 2 / 3, np.nan])
    # weights [0.6, 0.3] renormalised to [2/3, 1/3]; class 2 counts neither as 0 nor as 1
    assert weighted_iou(cm, [6, 3, 1]) == pytest.approx(2 / 3 * 1 / 2 + 1 / 3 * 2 / 3)


def test_scores_of_one_hand_image() -> None:
    scores = score_images(HAND_CM[None], ["matrix", "pore", "crack"], np.array([6, 3, 1]), 50)
    assert scores.macro_iou == pytest.approx(5 / 9)
    assert scores.macro_dice == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert scores.pixel_accuracy == pytest.approx(5 / 7)
    assert scores.weighted_iou == pytest.approx(7 / 15)
    np.testing.assert_allclose(scores.per_image_macro_iou, [5 / 9])
    assert scores.ci["macro_iou"] == pytest.approx((5 / 9, 5 / 9))  # one image: no spread


# --- torchmetrics cross-check -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("k", "absent"), [(2, None), (4, None), (4, 3)])
def test_against_torchmetrics(seed: int, k: int, absent: int | None) -> None:
    """Same counts and scores as torchmetrics, except for classes absent from both sides.

    Definitional difference: torchmetrics gives an absent-from-both class IoU / F1 of
    ``zero_division`` (0 by default) in ``average=None`` output, where matseg gives NaN; its
    ``"macro"`` average drops such classes, which equals matseg's NaN-skipping mean. Its
    ``"micro"`` pools TP / FP / FN over classes exactly as matseg's ``micro_iou``.
    """
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    pred, target = random_batch(seed, k, absent=absent)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    cm = confusion_matrix(pred, target, k, ignore_index=IGNORE)

    tm_cm = tmf.multiclass_confusion_matrix(p, t, k, ignore_index=IGNORE)
    np.testing.assert_array_equal(cm, tm_cm.numpy())

    ours, ours_dice = iou(cm), dice(cm)
    defined = ~np.isnan(ours)
    assert defined.sum() == k - (absent is not None)
    tm_iou = tmf.multiclass_jaccard_index(p, t, k, average=None, ignore_index=IGNORE).numpy()
    tm_f1 = tmf.multiclass_f1_score(p, t, k, average=None, ignore_index=IGNORE).numpy()
    np.testing.assert_allclose(ours[defined], tm_iou[defined], rtol=1e-6)
    np.testing.assert_allclose(ours_dice[defined], tm_f1[defined], rtol=1e-6)
    np.testing.assert_array_equal(tm_iou[~defined], 0.0)  # torchmetrics' zero_division
    np.testing.assert_array_equal(tm_f1[~defined], 0.0)

    tm_macro = tmf.multiclass_jaccard_index(p, t, k, average="macro", ignore_index=IGNORE)
    tm_micro = tmf.multiclass_jaccard_index(p, t, k, average="micro", ignore_index=IGNORE)
    assert macro_iou(cm) == pytest.approx(float(tm_macro), rel=1e-6)
    assert micro_iou(cm) == pytest.approx(float(tm_micro), rel=1e-6)


# --- the empty-vs-empty policy ----------------------------------------------------------------


def test_class_absent_from_both_is_nan_and_left_out_of_the_mean() -> None:
    target = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    cm = confusion_matrix(pred, target, 3)
    scores = iou(cm)
    assert np.isnan(scores[2]) and np.isnan(dice(cm)[2])
    assert macro_iou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2)  # not (.. + 1.0) / 3 nor / 3
    result = score_images(cm[None], ["a", "b", "c"], None, n_boot=0)
    assert result.per_image_macro_iou[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert np.isnan(result.per_image_iou[0, 2])


def test_all_background_image_is_not_a_perfect_foreground_score() -> None:
    empty = np.zeros((8, 8), dtype=np.uint8)
    cm = confusion_matrix(empty, empty, 2)
    np.testing.assert_array_equal(iou(cm), [1.0, np.nan])
    assert np.isnan(foreground_iou(cm))
    alone = score_images(cm[None], ["background", "pore"], None, n_boot=10)
    assert np.isnan(alone.foreground_iou) and np.isnan(alone.iou_per_class[1])
    assert np.isnan(alone.ci["foreground_iou"]).all()  # undefined in every resample
    record = alone.to_dict()
    assert record["foreground_iou"] is None and record["iou_per_class"]["pore"] is None
    json.dumps(record, allow_nan=False)

    # Pooled with an image that has foreground, the class is defined and the empty image adds
    # no free true positives.
    other = confusion_matrix(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]), 2)
    pooled = score_images(np.stack([cm, other]), ["background", "pore"], None, n_boot=0)
    assert pooled.foreground_iou == pytest.approx(1 / 2)
    assert np.isnan(pooled.per_image_foreground_iou[0])


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_ci_contains_estimate_and_is_seeded() -> None:
    cm = random_confusions(0, 40)
    weights = np.array([0.5, 0.3, 0.2])
    a = score_images(cm, ["a", "b", "c"], weights, n_boot=500, seed=3)
    b = score_images(cm, ["a", "b", "c"], weights, n_boot=500, seed=3)
    c = score_images(cm, ["a", "b", "c"], weights, n_boot=500, seed=4)
    assert set(a.ci) == {
        "macro_iou",
        "micro_iou",
        "macro_dice",
        "pixel_accuracy",
        "foreground_iou",
        "weighted_iou",
    }
    for name, (lo, hi) in a.ci.items():
        assert lo < getattr(a, name) < hi, name
    assert a.ci == b.ci
    assert a.ci != c.ci
    assert a.iou_per_class_ci is not None
    assert (a.iou_per_class_ci[:, 0] < a.iou_per_class).all()
    assert (a.iou_per_class < a.iou_per_class_ci[:, 1]).all()
    json.dumps(a.to_dict(), allow_nan=False)


def test_bootstrap_ci_narrows_with_more_images() -> None:
    few = score_images(random_confusions(1, 10), ["a", "b", "c"], None, n_boot=500)
    many = score_images(random_confusions(1, 400), ["a", "b", "c"], None, n_boot=500)
    for name in ("macro_iou", "micro_iou", "pixel_accuracy"):
        width_few = few.ci[name][1] - few.ci[name][0]
        width_many = many.ci[name][1] - many.ci[name][0]
        assert width_many < width_few / 2, name  # ~ 1 / sqrt(N): 40x the images, ~6x narrower
    assert "weighted_iou" not in few.ci and np.isnan(few.weighted_iou)


def test_bootstrap_pools_resampled_confusions() -> None:
    """Two very different images: every resample's pooled accuracy is one of three values."""
    perfect = np.array([[10, 0], [0, 10]])
    wrong = np.array([[0, 10], [10, 0]])
    scores = score_images(np.stack([perfect, wrong]), ["a", "b"], None, n_boot=200, seed=0)
    lo, hi = scores.ci["pixel_accuracy"]
    assert lo == pytest.approx(0.0) and hi == pytest.approx(1.0)
    assert scores.pixel_accuracy == pytest.approx(0.5)


# --- baselines --------------------------------------------------------------------------------


def test_baselines_on_mostly_foreground_tiles() -> None:
    rng = np.random.default_rng(0)
    n = 12
    targets = np.zeros((n, 10, 10), dtype=np.int64)
    for i in range(n):  # exactly 85 foreground pixels of 100 per tile
        targets[i].flat[rng.permutation(100)[:85]] = 1
    model = confusion_matrices(rng.integers(0, 2, size=targets.shape), targets, 2)
    counts = target_class_counts(model)
    np.testing.assert_array_equal(counts, np.tile([15, 85], (n, 1)))

    train = np.array([0.2, 0.8])
    assert majority_class(train) == 1
    result = baselines(counts, train, ["background", "foreground"], n_boot=100)
    assert set(result) == {"majority class", "all foreground"}
    fg = result["all foreground"]
    assert fg.foreground_iou == pytest.approx(0.85)
    np.testing.assert_allclose(fg.iou_per_class, [0.0, 0.85])
    assert fg.weighted_iou == pytest.approx(0.8 * 0.85)
    assert fg.pixel_accuracy == pytest.approx(0.85)
    np.testing.assert_array_equal(result["majority class"].confusion, fg.confusion)

    brute = confusion_matrices(np.ones_like(targets), targets, 2)
    np.testing.assert_array_equal(baseline_confusions(counts, 1), brute)


def test_baseline_counts_only_scored_pixels_and_multiclass_has_majority_only() -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 3, size=(4, 6, 6))
    targets[:, 0] = IGNORE
    counts = target_class_counts(confusion_matrices(targets, targets, 3))
    brute = confusion_matrices(np.full(targets.shape, 2), targets, 3)
    np.testing.assert_array_equal(baseline_confusions(counts, 2), brute)
    result = baselines(counts, np.array([10, 50, 40]), ["a", "b", "c"], n_boot=0)
    assert set(result) == {"majority class"}
    np.testing.assert_array_equal(result["majority class"].confusion[:, [0, 2]], 0)


# --- inputs -----------------------------------------------------------------------------------


def test_torch_and_numpy_inputs_agree() -> None:
    pred, target = random_batch(5, 4)
    expected = confusion_matrix(pred[0], target[0], 4)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    np.testing.assert_array_equal(confusion_matrix(p[0], t[0], 4), expected)
    np.testing.assert_array_equal(confusion_matrix(p[0], target[0], 4), expected)
    np.testing.assert_array_equal(confusion_matrix(p[0].to(torch.uint8), t[0], 4), expected)

    batch_np = confusion_matrices(pred, target, 4)
    batch_t = confusion_matrices(p, t, 4)
    assert isinstance(batch_np, np.ndarray) and isinstance(batch_t, torch.Tensor)
    assert batch_t.dtype == torch.int64 and batch_t.device == p.device
    np.testing.assert_array_equal(batch_t.numpy(), batch_np)
    loop = np.stack([confusion_matrix(a, b, 4) for a, b in zip(pred, target, strict=True)])
    np.testing.assert_array_equal(batch_np, loop)
    assert batch_np.sum() == (target != IGNORE).sum()


def test_ignore_index_none_counts_everything() -> None:
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2, ignore_index=None)
    np.testing.assert_array_equal(cm, [[1, 1], [0, 1]])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_bad_inputs_raise(as_tensor: bool) -> None:
    def arr(x: list[int] | np.ndarray) -> np.ndarray | torch.Tensor:
        return torch.as_tensor(np.asarray(x)) if as_tensor else np.asarray(x)

    target = [[0, 1, IGNORE]]
    with pytest.raises(MetricsError, match=r"pred: expected class ids in \[0, 2\)"):
        confusion_matrices(arr([[0, 2, 0]]), arr(target), 2)
    with pytest.raises(MetricsError, match="pred"):
        confusion_matrices(arr([[-1, 0, 0]]), arr(target), 2)
    with pytest.raises(MetricsError, match="target"):
        confusion_matrices(arr([[0, 0, 0]]), arr([[0, 3, 0]]), 2)
    with pytest.raises(MetricsError, match="argmax"):
        confusion_matrices(arr(np.zeros((1, 3))), arr(target), 2)
    with pytest.raises(MetricsError, match="same shape"):
        confusion_matrices(arr(np.zeros((1, 1, 3), dtype=int)), arr(target), 2)
    # a prediction at an ignored pixel is not counted, so it is not checked either
    cm = confusion_matrices(arr([[0, 1, 99]]), arr(target), 2)
    np.testing.assert_array_equal(np.asarray(cm), [[[1, 0], [0, 1]]])


def test_bad_scores_inputs_raise() -> None:
    assert issubclass(MetricsError, MatsegError)
    with pytest.raises(MetricsError, match="class names"):
        score_images(HAND_CM[None], ["a", "b"], None)
    with pytest.raises(MetricsError, match="class weights"):
        weighted_iou(HAND_CM, [1, 1])
    with pytest.raises(MetricsError, match="non-negative"):
        iou(-HAND_CM)
    with pytest.raises(MetricsError, match="predicted class"):
        baseline_confusions(np.array([[1, 2]]), 2)


def test_pooled_difference_is_the_gap_of_pooled_ious_with_a_sampling_interval() -> None:
    rng = np.random.default_rng(0)

    def images(n: int, error: float) -> np.ndarray:
        """n binary images of 1000 pixels, ``error`` of each class's pixels mislabelled on
        average (images vary: their error rates are uniform in [0, 2 error])."""
        wrong = rng.binomial(500, rng.uniform(0, 2 * error, size=(n, 1)), size=(n, 2))
        return np.stack([[[500 - w0, w0], [w1, 500 - w1]] for w0, w1 in wrong])

    reference = images(40, 0.10)
    same = [images(12, 0.10), images(12, 0.10)]
    better = [images(12, 0.02)]
    point, lo, hi = pooled_difference(reference, same, 1000, 0)
    expected = np.mean([macro_iou(m.sum(axis=0)) for m in same]) - macro_iou(reference.sum(axis=0))
    assert point == pytest.approx(expected)
    assert lo < 0 < hi  # same error rate: sampling explains the gap
    point, lo, hi = pooled_difference(reference, better, 1000, 0)
    assert point > 0.1 and lo > 0  # far fewer errors: outside sampling
    # the interval widens with fewer test images
    many = images(200, 0.10)
    _, lo_few, hi_few = pooled_difference(reference, [many[:3]], 1000, 0)
    _, lo_many, hi_many = pooled_difference(reference, [many], 1000, 0)
    assert hi_few - lo_few > hi_many - lo_many
