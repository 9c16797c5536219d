from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from PIL import Image

from slides.models import Slide, SlideState
from slides.services import cohort_import, slide_compute_tissue
from slides.services.tissue import load_tissue_mask, stored_overview_path

pytestmark = pytest.mark.django_db


def test_thumbnail_and_tissue_mask_are_stored(cohort, real_slides_dir: Path) -> None:
    cohort_import(cohort=cohort, path=real_slides_dir)
    slide = Slide.objects.get(original_filename="cmu-1-small-region.svs")
    slide_compute_tissue(slide=slide)
    slide.refresh_from_db()
    thumb = Image.open(Path(settings.ARTIFACTS_DIR) / slide.thumbnail)
    assert max(thumb.size) == 1024
    assert thumb.size[1] > thumb.size[0]  # the slide is taller than wide
    assert 0.05 < (slide.tissue_fraction or 0) < 0.95
    overview = Image.open(stored_overview_path(slide))
    assert overview.size == (1533, 2048)  # 2220 x 2967, the longer side at 2048 px
    mask = load_tissue_mask(slide)
    assert mask is not None and mask.mask.any()
    assert mask.l0_per_px == slide.tissue_l0_per_px


def test_slide_whose_file_vanished_becomes_unreadable(
    cohort, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    copy = folder / "gone.svs"
    copy.write_bytes((shared_data / "slides" / "cmu-1-small-region.svs").read_bytes())
    cohort_import(cohort=cohort, path=folder)
    copy.unlink()
    slide = slide_compute_tissue(slide=Slide.objects.get(cohort=cohort))
    assert slide.state == SlideState.UNREADABLE
    assert "gone.svs" in slide.error_message
    assert not slide.thumbnail
