"""Django-free evaluation of tumor maps: exact pixelwise AUC, thresholds, curves, pooling.

Modules: ``auc`` (256-bin class histograms of uint8 maps, exact ROC AUC), ``thresholds``
(confusion and scores at a threshold, max-F1 and Youden selection), ``curves`` (ROC and PR
curves, PNG plot), ``pooling`` (per-slide, per-location and pooled AUCs, with and without
background). Nothing here imports Django.
"""

from __future__ import annotations

from evaluation.metrics.auc import (
    AucResult,
    Histogram,
    auc_from_histograms,
    auc_result,
    histograms,
    pixel_auc,
)
from evaluation.metrics.pooling import EvaluationAccumulator, SlideHistograms, slide_histograms
from evaluation.metrics.thresholds import (
    Confusion,
    Scores,
    confusion_at,
    scores_at,
    threshold_max_f1,
    threshold_youden,
)

__all__ = [
    "AucResult",
    "Confusion",
    "EvaluationAccumulator",
    "Histogram",
    "Scores",
    "SlideHistograms",
    "auc_from_histograms",
    "auc_result",
    "confusion_at",
    "histograms",
    "pixel_auc",
    "scores_at",
    "slide_histograms",
    "threshold_max_f1",
    "threshold_youden",
]
