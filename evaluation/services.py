"""Scoring a run's tumor maps against the pathologists' contours (the paper's Table 1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from common.errors import InvalidInputError
from evaluation.metrics.auc import AucResult, Histogram
from evaluation.metrics.pooling import EvaluationAccumulator
from evaluation.metrics.thresholds import scores_at, threshold_max_f1, threshold_youden
from evaluation.models import Evaluation
from slides.models import Label, Slide
from slides.services.annotations import annotation_set_for
from training.mil.export import load_map_npz
from training.mil.maps import map_on_slide, map_truth
from training.models import HeatMap, TrainingRun

SCORED_LABELS = (Label.TUMOR, Label.NORMAL)


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON (PostgreSQL refuses them): store them as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, tuple | list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def _auc(result: AucResult) -> float | None:
    return result.auc if result.defined and math.isfinite(result.auc) else None


@dataclass
class _Scored:
    accumulator: EvaluationAccumulator
    missing_contours: list[str]
    n_pixels: int


def _score_maps(heatmaps: list[HeatMap]) -> _Scored:
    """Histograms of every map against its truth; normal slides are all negative."""
    accumulator = EvaluationAccumulator()
    missing: list[str] = []
    n_pixels = 0
    root = Path(settings.ARTIFACTS_DIR)
    for heatmap in heatmaps:
        slide = heatmap.slide
        slide_map, _ = load_map_npz(root / heatmap.map_path)
        if slide.label == Label.TUMOR:
            geometry = annotation_set_for(slide).tumor_geometry
            if geometry.is_empty:
                missing.append(slide.original_filename)
                continue
            truth = map_truth(slide_map, geometry)
        else:
            truth = np.zeros_like(slide_map.valid)
        # "With background" is every cell on the slide; the grid may overhang its border.
        on_slide = map_on_slide(slide_map)
        accumulator.add_slide(
            str(slide.pk),
            slide_map.probs,
            truth,
            tissue=slide_map.valid,
            valid=on_slide,
            location=slide.location or "unspecified",
        )
        n_pixels += int(on_slide.sum())
    return _Scored(accumulator, missing, n_pixels)


def _summary(acc: EvaluationAccumulator) -> dict[str, Any]:
    if not len(acc):
        return {"auc_tissue": None, "auc_all": None, "n_slides": 0}
    pooled = acc.pooled()
    return {
        "auc_tissue": _auc(pooled.tissue),
        "auc_all": _auc(pooled.all),
        "n_slides": pooled.n_slides,
    }


def _subset(acc: EvaluationAccumulator, slide_ids: set[str]) -> EvaluationAccumulator:
    sub = EvaluationAccumulator()
    for entry in acc.slides:
        if entry.slide_id in slide_ids:
            sub.add(entry)
    return sub


def _maps(run: TrainingRun, split: str) -> list[HeatMap]:
    return list(
        HeatMap.objects.filter(run=run, slide__split=split, slide__label__in=SCORED_LABELS)
        .select_related("slide")
        .order_by("slide__pk")
    )


def evaluation_compute(*, run: TrainingRun, split: str = "test") -> Evaluation:
    """Score the run's maps of a split and store the result (replacing an earlier one).

    AUCs are pooled over the split's slides, with background (whole map) and on tissue only,
    and reported apart for slides of the training locations (in-distribution) and of other
    locations (out-of-location). The threshold for precision, recall, F1 and Dice is the
    max-F1 threshold of the validation maps; without them, of this split's own maps (the
    source is recorded). Tumor slides without contours are listed, never silently dropped.
    """
    heatmaps = _maps(run, split)
    if not heatmaps:
        raise InvalidInputError(
            f"Run {run.pk} has no tumor maps of {split} slides: infer them first "
            f"(python manage.py infer --run {run.pk} --split {split}).",
            details={"run": run.pk, "split": split},
        )
    scored = _score_maps(heatmaps)
    acc = scored.accumulator
    if not len(acc):
        raise InvalidInputError(
            f"None of the {len(heatmaps)} {split} maps of run {run.pk} can be scored: the tumor "
            "slides have no contours.",
            details={"missing_contours": scored.missing_contours},
        )
    train_locations = set(
        Slide.objects.filter(cohort=run.cohort, split="train").values_list("location", flat=True)
    )
    by_id = {str(h.slide.pk): h.slide for h in heatmaps}
    in_dist = {sid for sid, s in by_id.items() if s.location in train_locations}

    threshold_source = "validation maps"
    val_hist: tuple[Histogram, Histogram] | None = None
    if split != "val" and (val_maps := _maps(run, "val")):
        val_acc = _score_maps(val_maps).accumulator
        if len(val_acc):
            val_hist = val_acc.pooled_histograms()
    if val_hist is None:
        val_hist = acc.pooled_histograms()
        threshold_source = f"{split} maps (no validation maps)"
    _, val_tissue = val_hist
    _, tissue = acc.pooled_histograms()
    threshold: int | None
    try:
        threshold = threshold_max_f1(val_tissue.pos, val_tissue.neg)
        youden: int | None = threshold_youden(val_tissue.pos, val_tissue.neg)
    except InvalidInputError:
        threshold = youden = None
        threshold_source = "undefined (a class is missing)"
    scores = scores_at(tissue.pos, tissue.neg, threshold) if threshold is not None else None
    summary = _summary(acc)
    details = {
        "in_distribution": _summary(_subset(acc, in_dist)),
        "out_of_location": _summary(_subset(acc, set(by_id) - in_dist)),
        "per_location": {
            loc: {
                "auc_tissue": _auc(pair.tissue),
                "auc_all": _auc(pair.all),
                "n_slides": pair.n_slides,
            }
            for loc, pair in sorted(acc.per_location().items())
        },
        "per_slide": [
            {
                "slide": by_id[s.slide_id].original_filename,
                "slide_id": int(s.slide_id),
                "label": by_id[s.slide_id].label,
                "location": s.location,
                "auc_tissue": _auc(s.tissue),
                "auc_all": _auc(s.all),
            }
            for s in acc.per_slide()
        ],
        "missing_contours": scored.missing_contours,
        "threshold_youden": youden,
        "histograms": {"all": acc.pooled_histograms()[0].to_dict(), "tissue": tissue.to_dict()},
    }
    with transaction.atomic():
        Evaluation.objects.filter(run=run, split=split).delete()
        return Evaluation.objects.create(
            run=run,
            split=split,
            auc_tissue=summary["auc_tissue"],
            auc_all=summary["auc_all"],
            threshold=threshold,
            threshold_source=threshold_source,
            precision=scores.precision if scores else None,
            recall=scores.recall if scores else None,
            f1=scores.f1 if scores else None,
            dice=scores.dice if scores else None,
            iou=scores.iou if scores else None,
            n_slides=summary["n_slides"],
            n_pixels=scored.n_pixels,
            details=details,
        )


def evaluation_as_dict(evaluation: Evaluation) -> dict[str, Any]:
    """The JSON form printed by `evaluate --json` and served by the API."""
    return {
        "run": evaluation.run_id,
        "split": evaluation.split,
        "auc_tissue": evaluation.auc_tissue,
        "auc_all": evaluation.auc_all,
        "per_location": evaluation.details.get("per_location", {}),
        "in_distribution": evaluation.details.get("in_distribution", {}),
        "out_of_location": evaluation.details.get("out_of_location", {}),
        "threshold": evaluation.threshold,
        "threshold_source": evaluation.threshold_source,
        "precision": evaluation.precision,
        "recall": evaluation.recall,
        "f1": evaluation.f1,
        "dice": evaluation.dice,
        "iou": evaluation.iou,
        "n_slides": evaluation.n_slides,
        "n_pixels": evaluation.n_pixels,
        "missing_contours": evaluation.details.get("missing_contours", []),
    }


def pcam_evaluate(
    *,
    run: TrainingRun,
    x_path: Path,
    y_path: Path,
    device: str = "auto",
    batch_size: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Patch-level AUC of the run's model on PatchCamelyon h5 files, stored as split "pcam"."""
    # Imported here: they load torch, which scoring maps and the web layer never need.
    from evaluation.metrics.pcam import evaluate_pcam
    from training.services.engine import run_model

    model, config, normalisation, torch_device = run_model(run, device=device)
    result = evaluate_pcam(
        model,
        x_path,
        y_path,
        normalisation=normalisation,
        device=torch_device,
        batch_size=batch_size,
        amp=config.amp,
        channels_last=config.channels_last,
        on_progress=on_progress,
    )
    result = {k: _json_safe(v) for k, v in result.items()}
    with transaction.atomic():
        Evaluation.objects.filter(run=run, split="pcam").delete()
        return Evaluation.objects.create(
            run=run,
            split="pcam",
            n_slides=0,
            n_pixels=int(result.get("n", 0)),
            details={"pcam": {**result, "x": str(x_path), "y": str(y_path)}},
        )
