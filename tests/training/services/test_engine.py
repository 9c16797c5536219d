"""The ORM-to-engine adapter: what the engine is given about each slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from PIL import Image

from slides.models import Slide
from slides.services.tissue import slide_compute_tissue
from training.mil.config import RunConfig
from training.mil.dataset import SlideBagDataset
from training.services.engine import slide_entries

pytestmark = pytest.mark.django_db


def test_entries_carry_the_stored_tissue_mask(tiny_cohort) -> None:  # type: ignore[no-untyped-def]
    slides = list(Slide.objects.filter(cohort=tiny_cohort, split="train").order_by("pk"))
    for slide in slides:
        slide_compute_tissue(slide=slide)
    entries = slide_entries(tiny_cohort, "train")
    assert [e.slide_id for e in entries] == [str(s.pk) for s in slides]
    for entry, slide in zip(entries, slides, strict=True):
        slide.refresh_from_db()
        assert entry.tissue_mask_path == str(Path(settings.ARTIFACTS_DIR) / slide.tissue_mask)
        assert Path(entry.tissue_mask_path).is_file()
        assert entry.tissue_l0_per_px == slide.tissue_l0_per_px


def test_the_loader_samples_inside_the_stored_mask(tiny_cohort) -> None:  # type: ignore[no-untyped-def]
    slide = Slide.objects.filter(cohort=tiny_cohort, split="train", label="tumor").first()
    assert slide is not None
    slide_compute_tissue(slide=slide)
    slide.refresh_from_db()
    # Keep only the stored mask's top-left quarter: patches must come from there alone.
    path = Path(settings.ARTIFACTS_DIR) / slide.tissue_mask

    mask = np.asarray(Image.open(path)) > 0
    quarter = np.zeros_like(mask)
    h, w = mask.shape
    quarter[: h // 2, : w // 2] = mask[: h // 2, : w // 2]
    assert quarter.sum() > 0 and quarter.sum() < mask.sum()
    Image.fromarray(quarter.astype(np.uint8) * 255).save(path)

    entries = [e for e in slide_entries(tiny_cohort, "train") if e.slide_id == str(slide.pk)]
    config = RunConfig(alpha=0.2, beta=0.0, patch_size=32, target_mpp=2.0, patches_per_slide=24)
    dataset = SlideBagDataset.from_config(entries, config)
    l0_xy = dataset[0]["l0_xy"].numpy()
    assert slide.tissue_l0_per_px is not None
    limit_x = (w // 2) * slide.tissue_l0_per_px
    limit_y = (h // 2) * slide.tissue_l0_per_px
    assert (l0_xy[:, 0] < limit_x).all() and (l0_xy[:, 1] < limit_y).all()


def test_entries_without_a_stored_mask(tiny_cohort) -> None:  # type: ignore[no-untyped-def]
    Slide.objects.filter(cohort=tiny_cohort).update(tissue_mask="", tissue_l0_per_px=None)
    entries = slide_entries(tiny_cohort, "train")
    assert entries and all(e.tissue_mask_path is None for e in entries)
    assert all(e.tissue_l0_per_px is None for e in entries)
