"""ROC and PR curves from histograms against sklearn; the PNG plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.metrics import roc_curve as sk_roc_curve

from common.errors import InvalidInputError
from evaluation.metrics.auc import Histogram, histograms
from evaluation.metrics.curves import average_precision, plot_roc_pr, pr_curve, roc_curve


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 256, 8000, dtype=np.uint8)
    if seed == 1:
        m = (m // 40 * 40).astype(np.uint8)
    truth = rng.random(8000) < 0.15 + 0.5 * (m / 255.0)
    return m, truth


@pytest.mark.parametrize("seed", range(3))
def test_roc_curve_matches_sklearn(seed: int) -> None:
    m, truth = _data(seed)
    fpr, tpr, thr = roc_curve(*histograms(m, truth))
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(truth, m, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    assert thr[0] == 256 and np.isinf(sk_thr[0])
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert np.all(np.diff(thr) < 0)


@pytest.mark.parametrize("seed", range(3))
def test_pr_curve_matches_sklearn(seed: int) -> None:
    m, truth = _data(seed)
    precision, recall, thr = pr_curve(*histograms(m, truth))
    sk_p, sk_r, sk_t = precision_recall_curve(truth, m)
    np.testing.assert_allclose(precision, sk_p, atol=1e-12)
    np.testing.assert_allclose(recall, sk_r, atol=1e-12)
    np.testing.assert_array_equal(thr, sk_t)
    assert average_precision(*histograms(m, truth)) == pytest.approx(
        average_precision_score(truth, m), abs=1e-12
    )


def test_empty_class_rates_are_nan() -> None:
    m = np.arange(256, dtype=np.uint8)
    fpr, tpr, _ = roc_curve(*histograms(m, np.zeros(256, bool)))
    assert np.isnan(tpr).all() and not np.isnan(fpr).any()
    _, recall, _ = pr_curve(*histograms(m, np.zeros(256, bool)))
    assert np.isnan(recall[:-1]).all()


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    curves = {}
    for name in ("slide A", "slide B"):
        m = rng.integers(0, 256, 4000, dtype=np.uint8)
        curves[name] = Histogram.from_map(m, rng.random(4000) < m / 300.0)
    curves["pooled"] = curves["slide A"] + curves["slide B"]
    out = plot_roc_pr(curves, tmp_path / "sub" / "curves.png", title="test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    pair = (curves["pooled"].pos, curves["pooled"].neg)
    assert plot_roc_pr({"pair": pair}, tmp_path / "b.png").is_file()
    with pytest.raises(InvalidInputError):
        plot_roc_pr({}, tmp_path / "c.png")
