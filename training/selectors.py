"""Reads of the training app (no engine imports: cheap to load in the web process)."""

from __future__ import annotations

from slides.models import Cohort, Slide
from training.models import RunStatus


def trained_cases(cohort: Cohort) -> set[str]:
    """Cases whose slides trained or validated a run that is running or finished."""
    if not cohort.runs.filter(status__in=[RunStatus.RUNNING, RunStatus.SUCCEEDED]).exists():
        return set()
    return set(
        Slide.objects.filter(cohort=cohort, split__in=["train", "val"], case__isnull=False)
        .values_list("case__submitter_id", flat=True)
        .distinct()
    )
