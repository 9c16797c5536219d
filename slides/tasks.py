"""Celery tasks of the slides app: ids in, one service call."""

from __future__ import annotations

from celery import shared_task

from slides.models import Slide
from slides.services import slide_compute_tissue


@shared_task(name="slides.compute_slide_tissue")
def compute_slide_tissue(slide_id: int) -> dict[str, object]:
    slide = Slide.objects.filter(pk=slide_id).first()
    if slide is None:
        return {"slide": slide_id, "status": "missing"}
    slide = slide_compute_tissue(slide=slide)
    return {"slide": slide_id, "status": slide.state, "tissue_fraction": slide.tissue_fraction}
