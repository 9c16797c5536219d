"""Scores at a threshold and threshold selection against brute force and sklearn."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from common.errors import InvalidInputError
from evaluation.metrics.auc import histograms
from evaluation.metrics.thresholds import (
    Confusion,
    confusion_at,
    scores_at,
    scores_from_confusion,
    threshold_max_f1,
    threshold_youden,
)


def _data(seed: int, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 256, n, dtype=np.uint8)
    if seed % 2:
        # Few distinct values: many thresholds tie.
        m = (m // 64 * 64 + 10).astype(np.uint8)
    truth = rng.random(n) < 0.1 + 0.6 * (m / 255.0)
    return m, truth


@pytest.mark.parametrize("seed", range(4))
def test_confusion_and_scores_match_sklearn(seed: int) -> None:
    m, truth = _data(seed)
    pos, neg = histograms(m, truth)
    for t in (0, 1, 50, 128, 200, 255, 256):
        pred = m >= t
        c = confusion_at(pos, neg, t)
        assert c == Confusion(
            tp=int((pred & truth).sum()),
            fp=int((pred & ~truth).sum()),
            fn=int((~pred & truth).sum()),
            tn=int((~pred & ~truth).sum()),
        )
        s = scores_at(pos, neg, t)
        assert s.threshold == t
        assert s.precision == pytest.approx(precision_score(truth, pred, zero_division=0))
        assert s.recall == pytest.approx(recall_score(truth, pred, zero_division=0))
        assert s.f1 == pytest.approx(f1_score(truth, pred, zero_division=0))
        assert s.iou == pytest.approx(jaccard_score(truth, pred, zero_division=0))
        assert s.dice == pytest.approx(s.f1, abs=1e-12)


def _brute_best(m: np.ndarray, truth: np.ndarray, score: str) -> set[int]:
    values: dict[int, Fraction] = {}
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    for t in range(256):
        pred = m >= t
        tp = int((pred & truth).sum())
        fp = int((pred & ~truth).sum())
        fn = n_pos - tp
        if score == "f1":
            values[t] = Fraction(2 * tp, 2 * tp + fp + fn)
        else:
            values[t] = Fraction(tp, n_pos) - Fraction(fp, n_neg)
    best = max(values.values())
    return {t for t, v in values.items() if v == best}


@pytest.mark.parametrize("seed", range(4))
def test_selection_agrees_with_brute_force_sweep(seed: int) -> None:
    m, truth = _data(seed, n=5000)
    pos, neg = histograms(m, truth)
    best_f1 = _brute_best(m, truth, "f1")
    best_j = _brute_best(m, truth, "youden")
    assert threshold_max_f1(pos, neg) == min(best_f1)
    assert threshold_youden(pos, neg) == min(best_j)


def test_selection_on_a_separable_map() -> None:
    m = np.array([10] * 50 + [200] * 30, dtype=np.uint8)
    truth = m == 200
    pos, neg = histograms(m, truth)
    # Every threshold in 11..200 separates perfectly; the lowest is chosen.
    assert threshold_max_f1(pos, neg) == 11
    assert threshold_youden(pos, neg) == 11
    assert scores_at(pos, neg, 11).f1 == 1.0


def test_zero_divisions_give_zero() -> None:
    s = scores_from_confusion(Confusion(tp=0, fp=0, fn=0, tn=10), threshold=3)
    assert (s.precision, s.recall, s.f1, s.dice, s.iou) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert s.specificity == 1.0 and s.accuracy == 1.0
    s = scores_from_confusion(Confusion(tp=0, fp=5, fn=5, tn=0), threshold=3)
    assert s.f1 == 0.0 and s.accuracy == 0.0


def test_empty_classes_and_bad_thresholds_are_refused() -> None:
    m = np.arange(256, dtype=np.uint8)
    pos, neg = histograms(m, np.zeros(256, bool))
    with pytest.raises(InvalidInputError, match="positive"):
        threshold_max_f1(pos, neg)
    with pytest.raises(InvalidInputError):
        threshold_youden(pos, neg)
    with pytest.raises(InvalidInputError):
        threshold_youden(neg, pos)
    for bad in (-1, 257, 1.5, True):
        with pytest.raises(InvalidInputError):
            confusion_at(neg, pos, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="integer"):
        confusion_at(pos.astype(float), neg, 3)


def test_confusion_unpacks() -> None:
    m = np.array([0, 100, 200, 250], dtype=np.uint8)
    tp, fp, fn, tn = confusion_at(*histograms(m, np.array([False, True, False, True])), 150)
    assert (tp, fp, fn, tn) == (1, 1, 1, 1)
