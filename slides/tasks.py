"""Celery tasks of the slides app: ids in, one service call."""

from __future__ import annotations

from celery import shared_task

from slides.models import Slide
from slides.services import slide_compute_tissue
from slides.services.uploads import uploads_purge_stale


@shared_task(name="slides.compute_slide_tissue")
def compute_slide_tissue(slide_id: int) -> dict[str, object]:
    slide = Slide.objects.filter(pk=slide_id).first()
    if slide is None:
        return {"slide": slide_id, "status": "missing"}
    slide = slide_compute_tissue(slide=slide)
    return {"slide": slide_id, "status": slide.state, "tissue_fraction": slide.tissue_fraction}


@shared_task(name="slides.purge_stale_uploads")
def purge_stale_uploads() -> dict[str, object]:
    """Abort uploads that received nothing for a week (run by ``celery beat``)."""
    return {"aborted": uploads_purge_stale()}
