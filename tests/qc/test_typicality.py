"""Per-point PRDC statistics: exact against brute force, expected values on Gaussians, errors."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from matseg.qc.typicality import (
    STATISTICS,
    ReferenceSet,
    distance_to_kth_neighbour,
    kth_neighbour_radii,
    prdc_statistics,
)


def brute_radii(points: np.ndarray, k: int) -> np.ndarray:
    """k-th neighbour distance inside ``points`` from the full matrix, self excluded by index."""
    d = cdist(points, points)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def brute_prdc(reference: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The four statistics straight from their definitions, on full distance matrices."""
    m = len(reference)
    rho_r, rho_q = brute_radii(reference, k), brute_radii(queries, k)
    d = cdist(queries, reference)  # (n, m)
    in_ref_balls = (d < rho_r[None, :]).sum(axis=1)
    recall = (d < rho_q[:, None]).sum(axis=1).astype(np.float64) / m
    density = in_ref_balls.astype(np.float64) / (k * m)
    precision = (in_ref_balls > 0).astype(np.float64)
    coverage = (d.min(axis=1) < rho_q).astype(np.float64)
    return np.stack([recall, density, precision, coverage], axis=1)


def grid_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer points on a small grid: many exact ties and duplicates, also across the sets.

    Integer coordinates keep every distance exact in float64 (GEMM and direct differences give
    the same bits), so brute force and the chunked GEMM path must agree exactly.
    """
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 4, size=(40, 3)).astype(np.float64)
    queries = rng.integers(0, 4, size=(30, 3)).astype(np.float64)
    queries[:5] = reference[:5]  # queries that sit exactly on reference points
    queries[5:8] = queries[8]  # repeated queries
    return reference, queries


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("chunk_size", [7, 2048])
def test_exact_against_brute_force_with_ties_and_duplicates(k: int, chunk_size: int) -> None:
    reference, queries = grid_data(seed=k)
    ref = ReferenceSet.build(reference, k=k, chunk_size=chunk_size)
    np.testing.assert_array_equal(ref.radii, brute_radii(reference, k))
    stats = prdc_statistics(ref, queries, chunk_size=chunk_size)
    np.testing.assert_array_equal(stats, brute_prdc(reference, queries, k))
    np.testing.assert_array_equal(
        distance_to_kth_neighbour(queries, reference, k, chunk_size=chunk_size),
        np.sort(cdist(queries, reference), axis=1)[:, k - 1],
    )


def test_duplicates_count_as_neighbours_at_distance_zero() -> None:
    points = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_array_equal(kth_neighbour_radii(points, k=1), [0.0, 0.0, 5.0])


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("chunk_size", [7, 64, 2048])
def test_exact_against_brute_force_on_continuous_data(k: int, chunk_size: int) -> None:
    rng = np.random.default_rng(100 + k)
    reference = rng.standard_normal((90, 16))
    reference[10:13] = reference[3]  # duplicates inside the reference set
    queries = np.concatenate([rng.standard_normal((50, 16)), rng.standard_normal((20, 16)) + 2])
    ref = ReferenceSet.build(reference, k=k, chunk_size=chunk_size)
    # GEMM distances differ from direct differences by rounding (~1e-8 at a duplicate)
    np.testing.assert_allclose(ref.radii, brute_radii(reference, k), rtol=1e-12, atol=1e-6)
    stats = prdc_statistics(ref, queries, chunk_size=chunk_size)
    np.testing.assert_array_equal(stats, brute_prdc(reference, queries, k))


def test_float32_agrees_with_float64() -> None:
    rng = np.random.default_rng(7)
    reference, queries = rng.standard_normal((200, 32)), rng.standard_normal((100, 32))
    stats64 = prdc_statistics(ReferenceSet.build(reference), queries)
    ref32 = ReferenceSet.build(reference, dtype=torch.float32)
    stats32 = prdc_statistics(ref32, queries, dtype=torch.float32)
    # float32 rounding may flip a near-tied strict comparison; almost every row must agree
    assert (stats32 == stats64).all(axis=1).mean() >= 0.97
    np.testing.assert_allclose(stats32, stats64, atol=2 / (5 * 200))


def test_theory_on_two_gaussians() -> None:
    """Expected values of the statistics for identical distributions, and 0 far away.

    For a query q_j drawn from the reference distribution, q_j, the other n-1 queries and the m
    reference points are exchangeable, so ordering them by distance from q_j interleaves the
    n-1 queries and m references uniformly at random. Hence:

    - coverage fails iff the k nearest are all queries: P = C(n-1, k) / C(n-1+m, k), the exact
      finite-sample value (about 2^-k for n = m; the "1 - e^-k" in the issue is not it);
    - the expected number of references before the k-th query is k m / n, so E[recall] = k/n;
    - q_j lies in r_i's k-NN ball with probability k/m, so E[#balls] = k and, with Forte's
      1/(k m) normalisation, E[density] = 1/m (Naeem's set-level density, normalised by
      1/(k n) over the whole batch, is then n/m * m * mean = 1 for n = m).

    The means are over 4 independent draws of (R, Q): the points of one draw are correlated,
    and one draw's mean coverage has a standard deviation of about 0.007 (0.002 over 4).
    """
    k, m, n, d = 5, 600, 600, 8
    means = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        ref = ReferenceSet.build(rng.standard_normal((m, d)), k=k)
        far = prdc_statistics(ref, rng.standard_normal((n, d)) + 20.0 / np.sqrt(d))
        assert not far.any()  # means 20 apart: outside every ball, all four statistics 0
        means.append(prdc_statistics(ref, rng.standard_normal((n, d))).mean(axis=0))
    recall, density, precision, coverage = np.mean(means, axis=0)
    assert STATISTICS == ("recall", "density", "precision", "coverage")
    assert m * density == pytest.approx(1.0, abs=0.1)
    assert coverage == pytest.approx(1 - comb(n - 1, k) / comb(n - 1 + m, k), abs=0.02)
    assert recall == pytest.approx(k / n, rel=0.1)
    assert precision > 0.9


def test_streaming_equals_batch_with_the_point_appended() -> None:
    k = 5
    rng = np.random.default_rng(3)
    ref = ReferenceSet.build(rng.standard_normal((120, 10)), k=k)
    anchors = rng.standard_normal((60, 10))
    new = np.concatenate([rng.standard_normal((4, 10)), rng.standard_normal((2, 10)) + 1.5])
    streamed = prdc_statistics(ref, new, distance_to_kth_neighbour(new, anchors, k))
    for j, q in enumerate(new):
        alone = prdc_statistics(ref, q[None], distance_to_kth_neighbour(q[None], anchors, k))
        batch = prdc_statistics(ref, np.concatenate([anchors, q[None]]))[-1]
        np.testing.assert_array_equal(alone[0], batch)
        np.testing.assert_array_equal(streamed[j], batch)


def test_dimension_mismatch_names_both_dimensions() -> None:
    ref = ReferenceSet.build(np.zeros((10, 8)) + np.arange(10)[:, None])
    with pytest.raises(ValueError, match=r"expected 8 features .* found 5"):
        prdc_statistics(ref, np.ones((20, 5)))
    with pytest.raises(ValueError, match=r"expected 8 features .* found 5"):
        distance_to_kth_neighbour(np.ones((2, 5)), np.ones((10, 8)))


def test_too_few_points() -> None:
    with pytest.raises(ValueError, match=r"expected more than k=5 points.*found 5"):
        kth_neighbour_radii(np.ones((5, 3)), k=5)
    with pytest.raises(ValueError, match=r"expected more than k=5 points.*found 5"):
        ReferenceSet.build(np.ones((5, 3)))
    ref = ReferenceSet.build(np.random.default_rng(0).standard_normal((10, 3)))
    with pytest.raises(ValueError, match=r"queries: expected more than k=5.*query_radii"):
        prdc_statistics(ref, np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"anchors: expected at least k=5 anchor points, found 4"):
        distance_to_kth_neighbour(np.ones((1, 3)), np.ones((4, 3)))


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        (np.ones(3), r"expected a 2-D array .* found shape \(3,\)"),
        (np.array([[1.0, np.nan, 0.0]] * 6), r"expected finite values, found NaN or inf in 6"),
        (np.array([["a", "b", "c"]] * 6), r"expected real numbers"),
    ],
)
def test_bad_queries(queries: np.ndarray, message: str) -> None:
    ref = ReferenceSet.build(np.random.default_rng(0).standard_normal((10, 3)))
    with pytest.raises(ValueError, match=message):
        prdc_statistics(ref, queries)


def test_bad_query_radii_and_arguments() -> None:
    ref = ReferenceSet.build(np.random.default_rng(0).standard_normal((10, 3)))
    with pytest.raises(ValueError, match=r"query_radii: expected shape \(2,\).*found \(3,\)"):
        prdc_statistics(ref, np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="query_radii: expected finite"):
        prdc_statistics(ref, np.ones((2, 3)), np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="chunk_size: expected a positive integer"):
        prdc_statistics(ref, np.ones((2, 3)), np.ones(2), chunk_size=0)
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        kth_neighbour_radii(np.ones((10, 3)), k=0)
    with pytest.raises(ValueError, match="expected one radius per reference point"):
        ReferenceSet(points=np.ones((10, 3)), radii=np.ones(9), k=5)


def test_chunks_are_capped_by_memory() -> None:
    from matseg.qc.typicality import _CHUNK_BYTES, _chunks

    rows = next(_chunks(10**6, 10**6, 2048, torch.float64))
    assert (rows.stop - rows.start) * 10**6 * 8 <= _CHUNK_BYTES
    assert next(_chunks(10, 10, 2048, torch.float32)) == slice(0, 10)
