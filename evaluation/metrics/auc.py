"""Exact pixelwise ROC AUC of uint8 probability maps, through 256-bin class histograms.

A predicted map stores ``round(probability * 255)`` as uint8, so every pixel's score is one of
256 values. Counting, per class, how many pixels take each value loses nothing the ROC AUC
needs: the AUC is the Mann-Whitney statistic, the probability that a random positive pixel
scores above a random negative one, a tie counting one half, and that is a sum over pairs of
values. Histograms also add, so the AUC of a set of slides (pooled), of one slide, or of one
organ ("location") comes from adding the slides' histograms, never from re-reading maps.

Counting is the hot path (hundreds of millions of pixels per evaluation): a single
``np.bincount`` over a 9-bit code ``value | truth << 8`` per pixel, in cache-sized chunks.
The AUC itself is computed with Python integers, exact for any pixel count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import InvalidInputError

# uint8 maps: one bin per representable score.
N_LEVELS = 256

# Pixels per bincount call. The uint16 codes of 64 Ki pixels (128 KiB) stay in L2 cache; measured
# on the 2-core VM this is ~2.5x faster than one bincount over 100 M pixels, and it bounds the
# temporary memory to a few hundred KiB whatever the map size.
COUNT_CHUNK_PIXELS = 1 << 16

# At most this many boolean masks are packed above the 8 value bits of a uint16 code
# (8 + 8 = 16 bits): more would not fit the code type.
MAX_PACKED_MASKS = 8

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
U8Array = npt.NDArray[np.uint8]


# -- counting -----------------------------------------------------------------------------------


def _as_flat_map(map_u8: npt.ArrayLike) -> U8Array:
    arr = np.asarray(map_u8)
    if arr.dtype != np.uint8:
        # A float map in [0, 1] would be silently truncated to 0/1 by a cast: refuse instead.
        raise InvalidInputError(
            f"a predicted map must be uint8 (probability * 255), got dtype {arr.dtype}",
            details={"dtype": str(arr.dtype)},
        )
    return arr.reshape(-1)


def _as_flat_mask(mask: npt.ArrayLike, name: str, shape: tuple[int, ...]) -> BoolArray:
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise InvalidInputError(
            f"{name} must be a boolean array, got dtype {arr.dtype}", details={"mask": name}
        )
    if arr.shape != shape:
        raise InvalidInputError(
            f"{name} has shape {arr.shape}, the map has shape {shape}",
            details={"mask": name, "shape": list(arr.shape), "map_shape": list(shape)},
        )
    return arr.reshape(-1)


def joint_counts(map_u8: npt.ArrayLike, masks: Sequence[npt.ArrayLike]) -> IntArray:
    """Count the pixels of every (mask bits, value) combination in one pass.

    ``masks`` are boolean arrays of the map's shape (at most ``MAX_PACKED_MASKS``). Returns an
    int64 array of shape ``(2,) * len(masks) + (256,)`` whose axis ``i`` is the bit of
    ``masks[i]`` and whose last axis is the map value: ``counts[1, 0, v]`` counts pixels of value
    ``v`` where ``masks[0]`` is true and ``masks[1]`` false.
    """
    shape = np.shape(map_u8)
    flat = _as_flat_map(map_u8)
    n_masks = len(masks)
    if n_masks > MAX_PACKED_MASKS:
        raise InvalidInputError(f"at most {MAX_PACKED_MASKS} masks can be counted jointly")
    flat_masks = [_as_flat_mask(m, f"mask {i}", shape).view(np.uint8) for i, m in enumerate(masks)]
    n_bins = N_LEVELS << n_masks
    total = np.zeros(n_bins, dtype=np.int64)
    n = flat.size
    step = min(COUNT_CHUNK_PIXELS, max(n, 1))
    code = np.empty(step, dtype=np.uint16)
    bits = np.empty(step, dtype=np.uint16)
    for start in range(0, n, step):
        stop = min(n, start + step)
        k = stop - start
        c = code[:k]
        np.copyto(c, flat[start:stop], casting="unsafe")
        for i, m in enumerate(flat_masks):
            b = bits[:k]
            np.copyto(b, m[start:stop], casting="unsafe")
            b <<= 8 + i
            c |= b
        total += np.bincount(c, minlength=n_bins)
    # code = value + 256 * sum(bit_i << i): reshaping puts the last mask first; reverse the axes.
    counts = total.reshape((2,) * n_masks + (N_LEVELS,))
    return np.ascontiguousarray(counts.transpose((*reversed(range(n_masks)), n_masks)))


def histograms(
    map_u8: npt.ArrayLike,
    truth: npt.ArrayLike,
    valid: npt.ArrayLike | None = None,
    *,
    sample_weight: npt.ArrayLike | None = None,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Per-class histograms ``(hist_pos, hist_neg)`` of a uint8 map's 256 values.

    ``truth`` (bool, the map's shape) says which pixels are tumor; only pixels where ``valid``
    (bool, optional) is true are counted. Without ``sample_weight`` the histograms are int64
    pixel counts; with it (float, the map's shape) they are float64 sums of the weights.
    """
    if sample_weight is None:
        masks: list[npt.ArrayLike] = [truth] if valid is None else [truth, valid]
        counts = joint_counts(map_u8, masks)
        if valid is not None:
            counts = counts[:, 1]
        return counts[1].copy(), counts[0].copy()
    shape = np.shape(map_u8)
    flat = _as_flat_map(map_u8)
    t = _as_flat_mask(truth, "truth", shape)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != shape:
        raise InvalidInputError(f"sample_weight has shape {w.shape}, the map has shape {shape}")
    w = w.reshape(-1)
    if valid is not None:
        v = _as_flat_mask(valid, "valid", shape)
        flat, t, w = flat[v], t[v], w[v]
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InvalidInputError("sample weights must be finite and non-negative")
    hist_pos = np.bincount(flat[t], weights=w[t], minlength=N_LEVELS)
    hist_neg = np.bincount(flat[~t], weights=w[~t], minlength=N_LEVELS)
    return hist_pos.astype(np.float64), hist_neg.astype(np.float64)


# -- AUC ----------------------------------------------------------------------------------------


def _check_histograms(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike) -> tuple[Any, Any]:
    pos = np.asarray(hist_pos)
    neg = np.asarray(hist_neg)
    if pos.ndim != 1 or pos.shape != neg.shape or pos.size == 0:
        raise InvalidInputError(
            f"histograms must be two 1-D arrays of the same length, got {pos.shape} and {neg.shape}"
        )
    for name, h in (("hist_pos", pos), ("hist_neg", neg)):
        if not (np.issubdtype(h.dtype, np.integer) or np.issubdtype(h.dtype, np.floating)):
            raise InvalidInputError(f"{name} must hold numbers, got dtype {h.dtype}")
        if np.issubdtype(h.dtype, np.floating) and not np.all(np.isfinite(h)):
            raise InvalidInputError(f"{name} holds NaN or infinite counts")
        if np.any(h < 0):
            raise InvalidInputError(f"{name} holds negative counts")
    return pos, neg


def _is_integer(a: npt.NDArray[Any]) -> bool:
    return bool(np.issubdtype(a.dtype, np.integer))


def auc_from_histograms(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike) -> float:
    """Exact ROC AUC from per-class histograms over ordered score bins (low to high).

    Equals ``sklearn.metrics.roc_auc_score`` on the pixels the histograms count: a positive
    scoring in a higher bin than a negative is a correctly ordered pair, a tie counts 1/2.

    Integer histograms are summed with Python integers, so the result is the correctly rounded
    value of the exact fraction for any pixel count (``P * N`` exceeds int64 from ~3e9 pixels
    per class; Python integers do not overflow). Float histograms (sample weights) use float64.

    Returns ``nan`` when one class is empty (the AUC is undefined there); use
    :func:`auc_result` to get that reported with a flag and a reason.
    """
    pos, neg = _check_histograms(hist_pos, hist_neg)
    if _is_integer(pos) and _is_integer(neg):
        n_pos = 0
        n_neg = 0
        twice_pairs = 0  # 2 * (ordered pairs) + ties, an exact integer
        for p, q in zip(pos.tolist(), neg.tolist(), strict=True):
            twice_pairs += p * (2 * n_neg + q)
            n_neg += q
            n_pos += p
        if n_pos == 0 or n_neg == 0:
            return math.nan
        # int / int is correctly rounded in Python, whatever the magnitude.
        return twice_pairs / (2 * n_pos * n_neg)
    pos_f = pos.astype(np.float64)
    neg_f = neg.astype(np.float64)
    total_pos = math.fsum(pos_f.tolist())
    total_neg = math.fsum(neg_f.tolist())
    if total_pos == 0.0 or total_neg == 0.0:
        return math.nan
    neg_below = np.concatenate(([0.0], np.cumsum(neg_f)[:-1]))
    pairs = math.fsum((pos_f * (neg_below + 0.5 * neg_f)).tolist())
    return pairs / total_pos / total_neg


@dataclass(frozen=True)
class AucResult:
    """An AUC with what a report needs to say about it.

    ``defined`` is False when a class is empty: ``auc`` is then ``nan`` and ``reason`` says
    which class is missing, so a report can print "undefined (no tumor pixels)" instead of a
    number.
    """

    auc: float
    defined: bool
    n_pos: int
    n_neg: int
    reason: str | None = None


def auc_result(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike) -> AucResult:
    """:func:`auc_from_histograms` with class counts and a definedness flag (integer counts)."""
    pos, neg = _check_histograms(hist_pos, hist_neg)
    if not (_is_integer(pos) and _is_integer(neg)):
        raise InvalidInputError("auc_result needs integer pixel counts; use auc_from_histograms")
    n_pos = sum(pos.tolist())
    n_neg = sum(neg.tolist())
    reason = None
    if n_pos == 0 and n_neg == 0:
        reason = "no pixels"
    elif n_pos == 0:
        reason = "no positive (tumor) pixels"
    elif n_neg == 0:
        reason = "no negative (non-tumor) pixels"
    return AucResult(
        auc=auc_from_histograms(pos, neg),
        defined=reason is None,
        n_pos=n_pos,
        n_neg=n_neg,
        reason=reason,
    )


def pixel_auc(
    map_u8: npt.ArrayLike, truth: npt.ArrayLike, valid: npt.ArrayLike | None = None
) -> float:
    """Exact ROC AUC of a uint8 map against a boolean truth, over ``valid`` pixels if given.

    ``nan`` when the counted pixels hold only one class.
    """
    hist_pos, hist_neg = histograms(map_u8, truth, valid)
    return auc_from_histograms(hist_pos, hist_neg)


# -- histogram object ---------------------------------------------------------------------------


def _zeros() -> IntArray:
    return np.zeros(N_LEVELS, dtype=np.int64)


@dataclass
class Histogram:
    """Per-class pixel counts of the 256 map values; adds with ``+`` to pool slides."""

    pos: IntArray = field(default_factory=_zeros)
    neg: IntArray = field(default_factory=_zeros)

    def __post_init__(self) -> None:
        pos = np.asarray(self.pos)
        neg = np.asarray(self.neg)
        if pos.shape != (N_LEVELS,) or neg.shape != (N_LEVELS,):
            raise InvalidInputError(f"a Histogram holds two arrays of {N_LEVELS} counts")
        if not (_is_integer(pos) and _is_integer(neg)):
            raise InvalidInputError("a Histogram holds integer pixel counts")
        if np.any(pos < 0) or np.any(neg < 0):
            raise InvalidInputError("a Histogram cannot hold negative counts")
        self.pos = pos.astype(np.int64, copy=True)
        self.neg = neg.astype(np.int64, copy=True)

    @classmethod
    def from_map(
        cls, map_u8: npt.ArrayLike, truth: npt.ArrayLike, valid: npt.ArrayLike | None = None
    ) -> Histogram:
        """Count a uint8 map against a boolean truth, over ``valid`` pixels if given."""
        pos, neg = histograms(map_u8, truth, valid)
        return cls(pos, neg)

    def add_map(
        self, map_u8: npt.ArrayLike, truth: npt.ArrayLike, valid: npt.ArrayLike | None = None
    ) -> None:
        """Add the counts of another map (e.g. another tile of the same slide) in place."""
        pos, neg = histograms(map_u8, truth, valid)
        self.pos += pos
        self.neg += neg

    def __add__(self, other: Histogram) -> Histogram:
        if not isinstance(other, Histogram):
            return NotImplemented
        return Histogram(self.pos + other.pos, self.neg + other.neg)

    def __iadd__(self, other: Histogram) -> Histogram:
        if not isinstance(other, Histogram):
            return NotImplemented
        self.pos += other.pos
        self.neg += other.neg
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return bool(np.array_equal(self.pos, other.pos) and np.array_equal(self.neg, other.neg))

    @property
    def n_pos(self) -> int:
        return int(sum(self.pos.tolist()))

    @property
    def n_neg(self) -> int:
        return int(sum(self.neg.tolist()))

    def auc(self) -> float:
        """Exact ROC AUC; ``nan`` when a class is empty."""
        return auc_from_histograms(self.pos, self.neg)

    def auc_result(self) -> AucResult:
        """AUC with class counts and a definedness flag."""
        return auc_result(self.pos, self.neg)

    def to_dict(self) -> dict[str, list[int]]:
        """JSON-ready counts, to store a slide's histogram with its evaluation."""
        return {"pos": [int(x) for x in self.pos], "neg": [int(x) for x in self.neg]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(np.asarray(data["pos"], dtype=np.int64), np.asarray(data["neg"], np.int64))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed histogram: {exc}") from exc
