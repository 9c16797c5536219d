"""Writes of the slides app: cohorts, imports, splits, tissue. Keyword-only, typed."""

from slides.services.cohorts import cohort_create, cohort_get_or_create, member_set_role
from slides.services.imports import ImportReport, cohort_import, discover_slide_files
from slides.services.splits import cohort_split, register_split_guard
from slides.services.tissue import slide_compute_tissue

__all__ = [
    "ImportReport",
    "cohort_create",
    "cohort_get_or_create",
    "cohort_import",
    "cohort_split",
    "discover_slide_files",
    "member_set_role",
    "register_split_guard",
    "slide_compute_tissue",
]
