"""Binary scores of a uint8 map at a threshold, and threshold selection, from class histograms.

Convention everywhere: at threshold ``t`` a pixel is predicted tumor when its value ``>= t``.
``t`` runs over 0..256: ``t = 0`` predicts every pixel tumor, ``t = 256`` none. The selection
functions return a threshold in 0..255, chosen on a validation set and then applied to test maps.

Zero divisions (no predicted positives for precision, no true positives for recall, nothing
predicted and nothing true for F1/Dice/IoU) give 0.0, as sklearn does with ``zero_division=0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from common.errors import InvalidInputError
from evaluation.metrics.auc import N_LEVELS

# Thresholds 0..256: one per uint8 value, plus "predict nothing".
MAX_THRESHOLD = N_LEVELS


class Confusion(NamedTuple):
    """Pixel counts at a threshold; unpacks as ``tp, fp, fn, tn``."""

    tp: int
    fp: int
    fn: int
    tn: int


@dataclass(frozen=True)
class Scores:
    """Binary segmentation scores at ``threshold`` (value >= threshold is tumor)."""

    threshold: int
    confusion: Confusion
    precision: float
    recall: float
    f1: float
    dice: float
    iou: float
    specificity: float
    accuracy: float


def _int_counts(hist: npt.ArrayLike, name: str) -> list[int]:
    arr = np.asarray(hist)
    if arr.shape != (N_LEVELS,):
        raise InvalidInputError(f"{name} must hold {N_LEVELS} counts, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(f"{name} must hold integer pixel counts, got {arr.dtype}")
    if np.any(arr < 0):
        raise InvalidInputError(f"{name} holds negative counts")
    return [int(x) for x in arr.tolist()]


def _at_or_above(counts: list[int]) -> list[int]:
    """``out[t]`` = pixels with value >= t, for t in 0..256 (Python ints: no overflow)."""
    out = [0] * (len(counts) + 1)
    for v in range(len(counts) - 1, -1, -1):
        out[v] = out[v + 1] + counts[v]
    return out


def _check_threshold(t: int) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise InvalidInputError(f"a threshold is an integer in 0..{MAX_THRESHOLD}, got {t!r}")
    if not 0 <= int(t) <= MAX_THRESHOLD:
        raise InvalidInputError(f"a threshold is an integer in 0..{MAX_THRESHOLD}, got {t}")
    return int(t)


def confusion_at(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike, t: int) -> Confusion:
    """TP, FP, FN, TN when pixels of value ``>= t`` are predicted tumor."""
    t = _check_threshold(t)
    pos = _int_counts(hist_pos, "hist_pos")
    neg = _int_counts(hist_neg, "hist_neg")
    tp = sum(pos[t:])
    fp = sum(neg[t:])
    return Confusion(tp=tp, fp=fp, fn=sum(pos) - tp, tn=sum(neg) - fp)


def _ratio(num: int, den: int) -> float:
    # Documented convention: an empty denominator scores 0.0 (sklearn's zero_division=0).
    return num / den if den else 0.0


def scores_from_confusion(c: Confusion, threshold: int) -> Scores:
    """Precision, recall, F1, Dice, IoU, specificity and accuracy of a confusion matrix."""
    precision = _ratio(c.tp, c.tp + c.fp)
    recall = _ratio(c.tp, c.tp + c.fn)
    # F1 as the harmonic mean of precision and recall; Dice as the overlap of the predicted and
    # true pixel sets. They are the same number for binary pixels, computed separately so a
    # report can show either without relying on that identity.
    f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    predicted = c.tp + c.fp
    true = c.tp + c.fn
    dice = _ratio(2 * c.tp, predicted + true)
    iou = _ratio(c.tp, predicted + true - c.tp)
    return Scores(
        threshold=threshold,
        confusion=c,
        precision=precision,
        recall=recall,
        f1=f1,
        dice=dice,
        iou=iou,
        specificity=_ratio(c.tn, c.tn + c.fp),
        accuracy=_ratio(c.tp + c.tn, c.tp + c.fp + c.fn + c.tn),
    )


def scores_at(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike, t: int) -> Scores:
    """All binary scores when pixels of value ``>= t`` are predicted tumor."""
    return scores_from_confusion(confusion_at(hist_pos, hist_neg, t), _check_threshold(t))


def threshold_max_f1(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike) -> int:
    """The threshold in 0..255 that maximises F1 (= Dice); ties go to the lowest threshold.

    Compared exactly (fractions), so equal F1 values are true ties. Raises
    :class:`InvalidInputError` when there is no positive pixel: F1 is then 0 everywhere and no
    threshold is better than another.
    """
    pos = _int_counts(hist_pos, "hist_pos")
    neg = _int_counts(hist_neg, "hist_neg")
    n_pos = sum(pos)
    if n_pos == 0:
        raise InvalidInputError("cannot choose a threshold: there is no positive (tumor) pixel")
    tp_ge = _at_or_above(pos)
    fp_ge = _at_or_above(neg)
    best_t = 0
    best = Fraction(-1)
    for t in range(N_LEVELS):
        tp, fp = tp_ge[t], fp_ge[t]
        fn = n_pos - tp
        den = 2 * tp + fp + fn  # > 0 since n_pos > 0
        f1 = Fraction(2 * tp, den)
        if f1 > best:
            best, best_t = f1, t
    return best_t


def threshold_youden(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike) -> int:
    """The threshold in 0..255 maximising Youden's J = TPR - FPR; ties go to the lowest.

    Compared exactly in integers. Raises :class:`InvalidInputError` when a class is empty.
    """
    pos = _int_counts(hist_pos, "hist_pos")
    neg = _int_counts(hist_neg, "hist_neg")
    n_pos, n_neg = sum(pos), sum(neg)
    if n_pos == 0 or n_neg == 0:
        raise InvalidInputError(
            "cannot choose a threshold: Youden's J needs both positive and negative pixels"
        )
    tp_ge = _at_or_above(pos)
    fp_ge = _at_or_above(neg)
    best_t = 0
    best: int | None = None
    for t in range(N_LEVELS):
        # J * n_pos * n_neg, an exact integer.
        j = tp_ge[t] * n_neg - fp_ge[t] * n_pos
        if best is None or j > best:
            best, best_t = j, t
    return best_t
