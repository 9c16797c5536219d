"""Exact histogram AUC against sklearn's roc_auc_score and exact fractions."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from common.errors import InvalidInputError
from evaluation.metrics.auc import (
    COUNT_CHUNK_PIXELS,
    N_LEVELS,
    Histogram,
    auc_from_histograms,
    auc_result,
    histograms,
    joint_counts,
    pixel_auc,
)

TOL = 1e-9


def _exact_auc(pos: list[int], neg: list[int]) -> Fraction:
    """Mann-Whitney by brute force over value pairs, in exact fractions."""
    num = Fraction(0)
    for i, p in enumerate(pos):
        for j, q in enumerate(neg):
            if i > j:
                num += p * q
            elif i == j:
                num += Fraction(p * q, 2)
    return num / (sum(pos) * sum(neg))


@pytest.mark.parametrize("seed", range(5))
def test_random_maps_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(50, 400)), int(rng.integers(50, 400)))
    m = rng.integers(0, 256, shape, dtype=np.uint8)
    # Truth correlated with the score so the AUC is away from 0.5.
    truth = rng.random(shape) < (m / 255.0) * rng.uniform(0.2, 1.0)
    assert pixel_auc(m, truth) == pytest.approx(roc_auc_score(truth.ravel(), m.ravel()), abs=TOL)


def test_more_pixels_than_one_chunk() -> None:
    rng = np.random.default_rng(7)
    n = 3 * COUNT_CHUNK_PIXELS + 123
    m = rng.integers(0, 256, n, dtype=np.uint8)
    truth = rng.random(n) < 0.3
    pos, neg = histograms(m, truth)
    np.testing.assert_array_equal(pos, np.bincount(m[truth], minlength=256))
    np.testing.assert_array_equal(neg, np.bincount(m[~truth], minlength=256))
    assert pixel_auc(m, truth) == pytest.approx(roc_auc_score(truth, m), abs=TOL)


def test_heavily_tied_scores_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    m = rng.choice(np.array([10, 128, 250], dtype=np.uint8), size=(300, 300))
    truth = rng.random(m.shape) < np.where(m == 250, 0.7, np.where(m == 128, 0.4, 0.2))
    assert pixel_auc(m, truth) == pytest.approx(roc_auc_score(truth.ravel(), m.ravel()), abs=TOL)


def test_all_same_scores_give_one_half() -> None:
    m = np.full((40, 40), 77, dtype=np.uint8)
    truth = np.zeros_like(m, dtype=bool)
    truth[:13] = True
    assert pixel_auc(m, truth) == 0.5


def test_perfect_and_inverted_separation() -> None:
    truth = np.zeros((20, 20), dtype=bool)
    truth[5:9, 3:17] = True
    perfect = np.where(truth, 200, 100).astype(np.uint8)
    inverted = np.where(truth, 100, 200).astype(np.uint8)
    assert pixel_auc(perfect, truth) == 1.0
    assert pixel_auc(inverted, truth) == 0.0


def test_valid_mask_restricts_the_pixels() -> None:
    rng = np.random.default_rng(11)
    m = rng.integers(0, 256, (120, 90), dtype=np.uint8)
    truth = rng.random(m.shape) < 0.4
    valid = rng.random(m.shape) < 0.6
    expected = roc_auc_score(truth[valid], m[valid])
    assert pixel_auc(m, truth, valid) == pytest.approx(expected, abs=TOL)
    pos, neg = histograms(m, truth, valid)
    assert pos.sum() + neg.sum() == valid.sum()


@pytest.mark.parametrize("seed", range(3))
def test_random_sample_weights_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    m = rng.integers(0, 256, 5000, dtype=np.uint8)
    truth = rng.random(5000) < 0.35
    w = rng.exponential(size=5000)
    pos, neg = histograms(m, truth, sample_weight=w)
    assert pos.dtype == np.float64
    expected = roc_auc_score(truth, m, sample_weight=w)
    assert auc_from_histograms(pos, neg) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("seed", range(5))
def test_random_class_balance_and_histograms_match_exact_fraction(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    pos = rng.integers(0, 1000, N_LEVELS) * (rng.random(N_LEVELS) < rng.random())
    neg = rng.integers(0, 1000, N_LEVELS) * (rng.random(N_LEVELS) < rng.random())
    pos[0] += 1
    neg[-1] += 1
    exact = _exact_auc(pos.tolist(), neg.tolist())
    assert auc_from_histograms(pos, neg) == pytest.approx(float(exact), abs=1e-15)


def test_huge_counts_do_not_overflow() -> None:
    # ~1e12 pixels per class: P * N ~ 1e24, far past int64, and each product p * q ~ 1e20.
    rng = np.random.default_rng(5)
    pos = rng.integers(0, 10**10, N_LEVELS, dtype=np.int64)
    neg = rng.integers(0, 10**10, N_LEVELS, dtype=np.int64)
    exact = _exact_auc(pos.tolist(), neg.tolist())
    got = auc_from_histograms(pos, neg)
    assert got == float(exact)  # correctly rounded exact fraction
    # A plain float64 computation at this size is close but not guaranteed to be exact.
    assert got == pytest.approx(float(exact), abs=1e-12)
    h = Histogram(pos, neg)
    assert h.n_pos == sum(pos.tolist()) and h.n_pos > 2**40
    half = Histogram(np.full(N_LEVELS, 4 * 10**9), np.full(N_LEVELS, 4 * 10**9))
    assert half.auc() == 0.5


def test_empty_class_is_nan_with_a_flag() -> None:
    m = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert math.isnan(pixel_auc(m, np.zeros(m.shape, bool)))
    assert math.isnan(pixel_auc(m, np.ones(m.shape, bool)))
    pos, neg = histograms(m, np.zeros(m.shape, bool))
    r = auc_result(pos, neg)
    assert not r.defined and math.isnan(r.auc) and r.n_pos == 0 and r.n_neg == 256
    assert r.reason is not None and "positive" in r.reason
    r2 = auc_result(neg, pos)
    assert not r2.defined and r2.reason is not None and "negative" in r2.reason
    ok = Histogram.from_map(m, m > 100).auc_result()
    assert ok.defined and ok.auc == 1.0 and ok.reason is None


def test_histograms_add_and_pool() -> None:
    rng = np.random.default_rng(9)
    maps = [rng.integers(0, 256, (50 + 10 * i, 60), dtype=np.uint8) for i in range(4)]
    truths = [rng.random(m.shape) < 0.1 * (i + 1) for i, m in enumerate(maps)]
    pooled = Histogram()
    for m, t in zip(maps, truths, strict=True):
        pooled += Histogram.from_map(m, t)
    total = sum((Histogram.from_map(m, t) for m, t in zip(maps, truths, strict=True)), Histogram())
    assert total == pooled
    concat_m = np.concatenate([m.ravel() for m in maps])
    concat_t = np.concatenate([t.ravel() for t in truths])
    assert pooled.auc() == pytest.approx(roc_auc_score(concat_t, concat_m), abs=TOL)
    h = Histogram()
    h.add_map(maps[0], truths[0])
    h.add_map(maps[1], truths[1])
    assert h == Histogram.from_map(maps[0], truths[0]) + Histogram.from_map(maps[1], truths[1])
    assert Histogram.from_dict(h.to_dict()) == h


def test_joint_counts_axes() -> None:
    m = np.array([0, 1, 1, 255], dtype=np.uint8)
    a = np.array([True, False, True, True])
    b = np.array([False, False, True, True])
    c = joint_counts(m, [a, b])
    assert c.shape == (2, 2, 256)
    assert c[1, 0, 0] == 1 and c[0, 0, 1] == 1 and c[1, 1, 1] == 1 and c[1, 1, 255] == 1
    assert c.sum() == 4


def test_bad_inputs_are_refused() -> None:
    m = np.zeros((4, 4), np.uint8)
    with pytest.raises(InvalidInputError, match="uint8"):
        pixel_auc(m.astype(np.float32), np.zeros((4, 4), bool))
    with pytest.raises(InvalidInputError, match="boolean"):
        pixel_auc(m, np.zeros((4, 4), np.int64))
    with pytest.raises(InvalidInputError, match="shape"):
        pixel_auc(m, np.zeros((4, 5), bool))
    with pytest.raises(InvalidInputError, match="negative"):
        auc_from_histograms(np.array([1, -1]), np.array([1, 1]))
    with pytest.raises(InvalidInputError, match="same length"):
        auc_from_histograms(np.ones(3, np.int64), np.ones(4, np.int64))
    with pytest.raises(InvalidInputError):
        Histogram(np.ones(10, np.int64), np.ones(10, np.int64))
    with pytest.raises(InvalidInputError):
        Histogram.from_dict({"pos": [1]})
