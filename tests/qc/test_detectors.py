"""OOD detectors: Forte protocol and robustness, baselines against brute force, the registry."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from matseg.qc.detectors import (
    DETECTORS,
    PAPER_COMPONENTS,
    Forte,
    KNNDistance,
    Mahalanobis,
    make_detector,
)


def _gaussians(
    seed: int = 0, d: int = 8, n: int = 300
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ID and shifted Gaussians, positive like pooled ReLU features (kNN normalises directions)."""
    rng = np.random.default_rng(seed)
    shift = np.r_[np.full(d // 2, 3.0), np.full(d - d // 2, -3.0)]
    return (
        rng.normal(size=(n, d)) + 6,
        rng.normal(size=(120, d)) + 6,
        rng.normal(size=(120, d)) + 6 + shift,
    )


@pytest.mark.parametrize("name", [n for n in DETECTORS if n != "forte-paper"])
def test_every_detector_separates_shifted_gaussians(name: str) -> None:
    train, id_test, ood = _gaussians()
    det = make_detector(name, seed=0).fit({"e": train})
    s_id, s_ood = det.score_samples({"e": id_test}), det.score_samples({"e": ood})
    assert roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood]) > 0.95
    # fitted state is fixed: scoring twice gives the same numbers
    np.testing.assert_array_equal(s_id, det.score_samples({"e": id_test}))


def test_same_distribution_scores_like_training_data() -> None:
    train, id_test, _ = _gaussians(1)
    more = np.random.default_rng(9).normal(size=(120, 8)) + 6
    det = make_detector("knn").fit({"e": train})
    auc = roc_auc_score(
        np.r_[np.ones(120), np.zeros(120)],
        np.r_[det.score_samples({"e": id_test}), det.score_samples({"e": more})],
    )
    assert 0.35 < auc < 0.65  # no signal where there is no shift


def test_forte_split_is_one_seeded_permutation() -> None:
    f = Forte(seed=3)
    held, ref, fit = f.split(90)
    assert len(held) == 30 and len(ref) == 30 and len(fit) == 30
    assert len(set(held) | set(ref) | set(fit)) == 90
    again = Forte(seed=3).split(90)
    assert all(np.array_equal(a, b) for a, b in zip((held, ref, fit), again, strict=True))


def test_forte_rows_stay_aligned_across_extractors() -> None:
    """Two extractors of the same patches: the reference sets are the same rows of each."""
    train, _, _ = _gaussians()
    f = Forte(seed=0).fit({"a": train, "b": train * 2.0})
    np.testing.assert_allclose(f.references_["a"].points * 2.0, f.references_["b"].points)
    stats = f.statistics({"a": train[:10], "b": train[:10] * 2.0})
    np.testing.assert_allclose(stats[:, :6], stats[:, 6:])  # scaling does not change PRDC


def test_forte_streaming_scores_do_not_depend_on_the_batch() -> None:
    train, id_test, ood = _gaussians()
    f = Forte(seed=0).fit({"e": train})
    together = f.score_samples({"e": np.r_[id_test, ood]})
    alone = f.score_samples({"e": id_test[:1]})
    assert together[0] == pytest.approx(alone[0])
    batch = Forte(seed=0, mode="batch").fit({"e": train})
    small = batch.score_samples({"e": id_test[:20]})[:5]
    large = batch.score_samples({"e": id_test})[:5]
    assert not np.allclose(small, large)  # the paper's batch mode: scores move with the batch


def test_forte_is_not_fooled_by_the_all_zero_spike() -> None:
    """Far points have all-zero PRDC statistics, the same as mildly atypical ID points.

    The paper's Forte (raw statistics) can only tie them; with the margins (matseg's default)
    far-away points score below every in-distribution point.
    """
    train, id_test, _ = _gaussians(2)
    far = np.random.default_rng(5).normal(size=(50, 8)) + 30.0
    f = Forte(seed=0).fit({"e": train})
    assert (f.statistics({"e": far})[:, 1:3] == 0).all()  # density and precision
    assert f.score_samples({"e": far}).max() < f.score_samples({"e": id_test}).min()
    paper = make_detector("forte-paper").fit({"e": train})
    assert paper.statistics({"e": far}).shape == (50, 4)
    paper_batch = make_detector("forte-paper", mode="batch").fit({"e": train})
    assert (paper_batch.statistics({"e": far}) == 0).all()  # the fused-batch protocol: all zero
    assert np.unique(paper_batch.score_samples({"e": far})).size == 1  # one tied score for all


def test_forte_component_rules() -> None:
    train, _, _ = _gaussians()
    assert (
        1 <= Forte(seed=0, components="bic", max_components=4).fit({"e": train}).n_components_ <= 4
    )
    assert Forte(seed=0, components="paper").fit({"e": train}).n_components_ in PAPER_COMPONENTS
    assert Forte(seed=0, components=3).fit({"e": train}).n_components_ == 3
    assert Forte(seed=0, density="ocsvm").fit({"e": train}).nu_ in (0.01, 0.05, 0.1, 0.2, 0.5)


def test_knn_is_the_kth_normalised_distance() -> None:
    train, id_test, _ = _gaussians()
    det = KNNDistance(k=3).fit({"e": train})
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = id_test / np.linalg.norm(id_test, axis=1, keepdims=True)
    brute = np.sort(np.linalg.norm(q[:, None] - t[None], axis=2), axis=1)[:, 2]
    np.testing.assert_allclose(-det.score_extractor("e", id_test), brute, rtol=1e-10)


def test_mahalanobis_matches_its_formula() -> None:
    train, id_test, _ = _gaussians()
    det = Mahalanobis().fit({"e": train})
    mean, precision = det.models_["e"]
    d = id_test[0] - mean
    assert det.score_extractor("e", id_test[:1])[0] == pytest.approx(-d @ precision @ d)


def test_bad_input_is_named() -> None:
    train, _, _ = _gaussians()
    det = make_detector("knn").fit({"e": train})
    with pytest.raises(ValueError, match="expected dimension 8 for e, found 3"):
        det.score_samples({"e": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="same rows for every extractor"):
        make_detector("forte").fit({"a": train, "b": train[:10]})
    with pytest.raises(ValueError, match="expected one of"):
        make_detector("isolation-forest")
    with pytest.raises(ValueError, match="more than k=5 points"):
        Forte().fit({"e": train[:12]})
