"""ROC and precision-recall curves of uint8 maps from class histograms, and their plot.

The curves have one point per map value actually present (at most 256), whatever the number of
pixels, so they are cheap to store with an evaluation and to draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import InvalidInputError
from evaluation.metrics.auc import N_LEVELS, Histogram, auc_from_histograms

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Enough for a report page and small enough to embed in HTML (about 100 KB).
PLOT_DPI = 120

HistogramLike = Histogram | tuple[npt.ArrayLike, npt.ArrayLike]


def _counts(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    pos = np.asarray(hist_pos)
    neg = np.asarray(hist_neg)
    if pos.shape != (N_LEVELS,) or neg.shape != (N_LEVELS,):
        raise InvalidInputError(f"histograms must hold {N_LEVELS} counts each")
    if not (np.issubdtype(pos.dtype, np.integer) and np.issubdtype(neg.dtype, np.integer)):
        raise InvalidInputError("curves need integer pixel counts")
    if np.any(pos < 0) or np.any(neg < 0):
        raise InvalidInputError("histograms hold negative counts")
    return pos.astype(np.int64), neg.astype(np.int64)


def _divide(num: IntArray, den: int) -> FloatArray:
    if den == 0:
        # Undefined rate (empty class): NaN, as for the AUC, never a made-up number.
        return np.full(num.shape, np.nan, dtype=np.float64)
    return num.astype(np.float64) / float(den)


def roc_curve(
    hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, IntArray]:
    """ROC curve ``(fpr, tpr, thresholds)`` with thresholds decreasing.

    ``thresholds[0]`` is 256 (nothing predicted tumor, the point (0, 0)); then every map value
    present, highest first, a pixel being predicted tumor when its value ``>= threshold``. This is
    ``sklearn.metrics.roc_curve(drop_intermediate=False)`` with 256 in place of its ``inf``.
    A rate whose class is empty is NaN.
    """
    pos, neg = _counts(hist_pos, hist_neg)
    present = np.flatnonzero((pos + neg) > 0)[::-1]
    tp_ge = np.cumsum(pos[::-1])[::-1]  # tp_ge[v] = positives with value >= v
    fp_ge = np.cumsum(neg[::-1])[::-1]
    thresholds = np.concatenate(([N_LEVELS], present)).astype(np.int64)
    tps = np.concatenate(([0], tp_ge[present])).astype(np.int64)
    fps = np.concatenate(([0], fp_ge[present])).astype(np.int64)
    return _divide(fps, int(neg.sum())), _divide(tps, int(pos.sum())), thresholds


def pr_curve(
    hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Precision-recall curve ``(precision, recall, thresholds)``, thresholds increasing.

    ``precision[i]`` and ``recall[i]`` are measured at ``thresholds[i]`` (every map value
    present, lowest first); a last point (precision 1, recall 0) without a threshold closes the
    curve, as in ``sklearn.metrics.precision_recall_curve``. Recall is NaN when there is no
    positive pixel.
    """
    pos, neg = _counts(hist_pos, hist_neg)
    present = np.flatnonzero((pos + neg) > 0)
    tp_ge = np.cumsum(pos[::-1])[::-1][present]
    fp_ge = np.cumsum(neg[::-1])[::-1][present]
    predicted = tp_ge + fp_ge  # > 0: each threshold is a value some pixel has
    precision = tp_ge.astype(np.float64) / np.maximum(predicted, 1).astype(np.float64)
    recall = _divide(tp_ge, int(pos.sum()))
    return (
        np.concatenate((precision, [1.0])),
        np.concatenate((recall, [0.0])),
        present.astype(np.int64),
    )


def average_precision(hist_pos: npt.ArrayLike, hist_neg: npt.ArrayLike) -> float:
    """Average precision, sum over thresholds of (recall step) * precision (sklearn's AP)."""
    precision, recall, _ = pr_curve(hist_pos, hist_neg)
    if np.isnan(recall).any():
        return float("nan")
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def _as_pair(value: HistogramLike) -> tuple[npt.ArrayLike, npt.ArrayLike]:
    if isinstance(value, Histogram):
        return value.pos, value.neg
    if isinstance(value, tuple) and len(value) == 2:
        return value
    raise InvalidInputError("a curve is given as a Histogram or a (hist_pos, hist_neg) pair")


def plot_roc_pr(
    curves: Mapping[str, HistogramLike], path: str | Path, *, title: str | None = None
) -> Path:
    """Draw ROC (left) and precision-recall (right) curves side by side into a PNG.

    ``curves`` maps a legend name (a slide, a location, "pooled") to its histograms; the legend
    shows each curve's AUC and average precision. Uses matplotlib's Agg canvas directly (no
    pyplot global state), so it is safe in worker processes without a display. Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise InvalidInputError("nothing to plot: no curves given")
    out = Path(path)
    fig = Figure(figsize=(10.0, 4.6))
    FigureCanvasAgg(fig)
    ax_roc, ax_pr = fig.subplots(1, 2)
    for name, value in curves.items():
        pos, neg = _as_pair(value)
        fpr, tpr, _ = roc_curve(pos, neg)
        precision, recall, _ = pr_curve(pos, neg)
        auc = auc_from_histograms(np.asarray(pos), np.asarray(neg))
        ap = average_precision(pos, neg)
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
        ax_pr.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f})")
    ax_roc.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"dpi": PLOT_DPI, "format": "png"}
    fig.savefig(out, **kwargs)
    return out
