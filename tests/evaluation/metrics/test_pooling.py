"""Per-slide, per-location and pooled AUCs, with and without background."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from common.errors import InvalidInputError
from evaluation.metrics.auc import Histogram
from evaluation.metrics.pooling import EvaluationAccumulator, slide_histograms


def _slide(seed: int, with_tumor: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (60 + seed, 80)
    tissue = np.zeros(shape, bool)
    tissue[10:50, 10:70] = True
    truth = np.zeros(shape, bool)
    if with_tumor:
        truth[20:35, 20:45] = True
    m = rng.integers(0, 120, shape).astype(np.uint8)
    m[truth] += rng.integers(0, 130, int(truth.sum())).astype(np.uint8)
    return m, truth, tissue


def test_slide_histograms_split_all_and_tissue() -> None:
    m, truth, tissue = _slide(0)
    valid = np.ones(m.shape, bool)
    valid[:, -5:] = False
    h = slide_histograms("s0", m, truth, tissue=tissue, valid=valid, location="breast")
    assert h.all == Histogram.from_map(m, truth, valid)
    assert h.tissue == Histogram.from_map(m, truth, tissue & valid)
    assert h.all.auc() == pytest.approx(roc_auc_score(truth[valid], m[valid]), abs=1e-12)
    assert h.tissue.auc() == pytest.approx(
        roc_auc_score(truth[tissue & valid], m[tissue & valid]), abs=1e-12
    )


def test_accumulator_pools_per_slide_and_per_location() -> None:
    acc = EvaluationAccumulator()
    slides = {
        "a": (_slide(1), "breast"),
        "b": (_slide(2), "breast"),
        "c": (_slide(3), "lung"),
        "n": (_slide(4, with_tumor=False), None),
    }
    for sid, ((m, truth, tissue), loc) in slides.items():
        acc.add_slide(sid, m, truth, tissue=tissue, location=loc)
    assert len(acc) == 4

    def concat(keys: list[str], in_tissue: bool) -> float:
        ms, ts = [], []
        for k in keys:
            (m, truth, tissue), _ = slides[k]
            sel = tissue if in_tissue else np.ones(m.shape, bool)
            ms.append(m[sel])
            ts.append(truth[sel])
        return float(roc_auc_score(np.concatenate(ts), np.concatenate(ms)))

    pooled = acc.pooled()
    assert pooled.n_slides == 4
    assert pooled.all.auc == pytest.approx(concat(list(slides), False), abs=1e-12)
    assert pooled.tissue.auc == pytest.approx(concat(list(slides), True), abs=1e-12)

    per_slide = {s.slide_id: s for s in acc.per_slide()}
    assert list(per_slide) == ["a", "b", "c", "n"]
    assert per_slide["a"].all.auc == pytest.approx(concat(["a"], False), abs=1e-12)
    assert not per_slide["n"].all.defined and math.isnan(per_slide["n"].tissue.auc)

    per_loc = acc.per_location()
    assert set(per_loc) == {"breast", "lung", ""}
    assert per_loc["breast"].n_slides == 2
    assert per_loc["breast"].tissue.auc == pytest.approx(concat(["a", "b"], True), abs=1e-12)
    assert not per_loc[""].all.defined

    all_h, _tissue_h = acc.pooled_histograms()
    assert all_h.n_pos + all_h.n_neg == sum(s[0][0].size for s in slides.values())


def test_duplicate_slide_is_refused() -> None:
    acc = EvaluationAccumulator()
    m, truth, tissue = _slide(0)
    acc.add_slide("x", m, truth, tissue=tissue)
    with pytest.raises(InvalidInputError, match="already"):
        acc.add_slide("x", m, truth, tissue=tissue)
    with pytest.raises(InvalidInputError, match="already"):
        acc.add(slide_histograms("x", m, truth, tissue=tissue))


def test_empty_accumulator_is_undefined() -> None:
    p = EvaluationAccumulator().pooled()
    assert p.n_slides == 0 and not p.all.defined and p.all.reason == "no pixels"
