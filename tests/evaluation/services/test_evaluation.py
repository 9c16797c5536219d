"""Evaluation of stored maps against contours, with maps whose quality is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from common.errors import InvalidInputError
from evaluation.models import Evaluation
from evaluation.services import evaluation_as_dict, evaluation_compute
from slides.models import Annotation, Slide
from slides.services.annotations import annotation_set_for
from training.mil.export import save_map_npz
from training.mil.maps import SlideMap, map_truth
from training.models import HeatMap, RunStatus, TrainingRun

pytestmark = pytest.mark.django_db
CELL = 32.0  # level-0 pixels per map cell


def blank_map(slide: Slide) -> SlideMap:
    rows, cols = int(np.ceil(slide.height / CELL)), int(np.ceil(slide.width / CELL))
    return SlideMap(
        probs=np.zeros((rows, cols), np.uint8), valid=np.ones((rows, cols), bool),
        l0_origin=(0.0, 0.0), l0_cell_size=CELL, patch_size=32, target_mpp=2.0,
        m_cells_per_patch=(1, 1), l0_slide_size=(slide.width, slide.height),
        slide_mpp=slide.mpp,
    )  # fmt: skip


def store(run: TrainingRun, slide: Slide, probs: np.ndarray, valid: np.ndarray) -> None:
    base = blank_map(slide)
    slide_map = SlideMap(**{**base.__dict__, "probs": probs.astype(np.uint8), "valid": valid})
    path = Path(settings.ARTIFACTS_DIR) / "runs" / str(run.pk) / "maps" / f"{slide.pk}.npz"
    save_map_npz(slide_map, path, provenance={"run": run.pk})
    HeatMap.objects.create(
        run=run, slide=slide, map_path=str(path.relative_to(settings.ARTIFACTS_DIR)),
        rows=probs.shape[0], cols=probs.shape[1], l0_cell_size=CELL,
    )  # fmt: skip


def truth_of(slide: Slide) -> np.ndarray:
    if slide.label == "normal":
        return np.zeros(blank_map(slide).probs.shape, bool)
    return map_truth(blank_map(slide), annotation_set_for(slide).tumor_geometry)


@pytest.fixture
def run(tiny_cohort) -> TrainingRun:  # type: ignore[no-untyped-def]
    return TrainingRun.objects.create(
        cohort=tiny_cohort, config={"alpha": 0.2, "beta": 0.0}, alpha=0.2, beta=0.0,
        status=RunStatus.SUCCEEDED,
    )  # fmt: skip


def map_all(run: TrainingRun, make: callable, splits=("val", "test")) -> None:  # type: ignore[valid-type]
    for slide in Slide.objects.filter(cohort=run.cohort, split__in=splits):
        truth = truth_of(slide)
        store(run, slide, make(truth), np.ones(truth.shape, bool))


def test_a_perfect_map_scores_one_and_a_constant_map_one_half(run) -> None:  # type: ignore[no-untyped-def]
    map_all(run, lambda truth: truth * 230 + 10)
    perfect = evaluation_compute(run=run, split="test")
    assert perfect.auc_tissue == pytest.approx(1.0) and perfect.auc_all == pytest.approx(1.0)
    assert perfect.threshold_source == "validation maps"
    assert perfect.f1 == pytest.approx(1.0) and perfect.dice == pytest.approx(1.0)
    assert 10 < perfect.threshold <= 240
    assert perfect.n_slides == 2
    HeatMap.objects.all().delete()
    map_all(run, lambda truth: np.full(truth.shape, 128))
    constant = evaluation_compute(run=run, split="test")
    assert constant.auc_tissue == pytest.approx(0.5)
    assert Evaluation.objects.filter(run=run, split="test").count() == 1  # replaced


def test_noisy_map_matches_sklearn_and_tissue_excludes_background(run) -> None:  # type: ignore[no-untyped-def]
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    probs_by_slide = {}
    for slide in Slide.objects.filter(cohort=run.cohort, split__in=("val", "test")):
        truth = truth_of(slide)
        probs = np.clip(truth * 60 + rng.normal(100, 40, truth.shape), 0, 255).astype(np.uint8)
        valid = np.zeros(truth.shape, bool)
        valid[:, : truth.shape[1] // 2 + 7] = True  # "tissue" is the left part only
        store(run, slide, probs, valid)
        probs_by_slide[slide.pk] = (probs, truth, valid)
    result = evaluation_as_dict(evaluation_compute(run=run, split="test"))
    test_ids = Slide.objects.filter(cohort=run.cohort, split="test").values_list("pk", flat=True)
    p = np.concatenate([probs_by_slide[i][0][probs_by_slide[i][2]] for i in test_ids])
    t = np.concatenate([probs_by_slide[i][1][probs_by_slide[i][2]] for i in test_ids])
    assert result["auc_tissue"] == pytest.approx(roc_auc_score(t, p), abs=1e-9)
    p_all = np.concatenate([probs_by_slide[i][0].ravel() for i in test_ids])
    t_all = np.concatenate([probs_by_slide[i][1].ravel() for i in test_ids])
    assert result["auc_all"] == pytest.approx(roc_auc_score(t_all, p_all), abs=1e-9)
    assert set(result["per_location"]) == set(
        Slide.objects.filter(pk__in=test_ids).values_list("location", flat=True)
    )
    assert result["n_pixels"] == sum(probs_by_slide[i][0].size for i in test_ids)


def test_tumor_slide_without_contours_is_listed(run) -> None:  # type: ignore[no-untyped-def]
    map_all(run, lambda truth: truth * 200)
    tumor = Slide.objects.get(cohort=run.cohort, split="test", label="tumor")
    Annotation.objects.filter(slide=tumor).delete()
    result = evaluation_as_dict(evaluation_compute(run=run, split="test"))
    assert result["missing_contours"] == [tumor.original_filename]
    assert result["n_slides"] == 1


def test_no_maps_is_a_clear_error(run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="infer them first"):
        evaluation_compute(run=run, split="test")
