"""Writes that a cohort's members make through the web: cohort settings, membership, slide
labels and splits, contours. Keyword-only and typed; the caller has checked the role
(:mod:`slides.permissions`), these functions check the data."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from shapely.geometry import mapping

from common.errors import AnnotationError, ConflictError, InvalidInputError, NotFoundError
from slides.models import (
    Annotation,
    Cohort,
    Label,
    LabelSource,
    Membership,
    Role,
    Slide,
    Split,
    Upload,
)
from slides.services.cohorts import MAX_COHORT_NAME
from slides.services.splits import _split_guards, split_unit
from slides.wsi.annotations import parse_geojson

logger = logging.getLogger(__name__)

# Bounds of a plausible scanner resolution, as cohort_create checks them.
MIN_MPP, MAX_MPP = 0.01, 100.0
# Location names are free text shown in reports; this is the model's column width.
MAX_LOCATION = 100
# One POST of contours: the largest real contour sets (CAMELYON16, 71k vertices) are far below.
MAX_CONTOURS_PER_POST = 10_000
# The width of Annotation.label: tumor, exclusion, normal, or a short class name of its own.
MAX_LABEL = 12


# -- cohort settings ---------------------------------------------------------------------------


def cohort_update(
    *,
    cohort: Cohort,
    name: str | None = None,
    description: str | None = None,
    default_location: str | None = None,
    default_mpp: float | None = None,
    clear_default_mpp: bool = False,
) -> Cohort:
    """Change a cohort's name, description, default location or default resolution."""
    fields: list[str] = []
    if name is not None:
        name = name.strip()
        if not name:
            raise InvalidInputError("A cohort needs a name.", details={"field": "name"})
        if len(name) > MAX_COHORT_NAME:
            raise InvalidInputError(
                f"A cohort name has at most {MAX_COHORT_NAME} characters.",
                details={"field": "name"},
            )
        cohort.name = name
        fields.append("name")
    if description is not None:
        cohort.description = description
        fields.append("description")
    if default_location is not None:
        cohort.default_location = default_location.strip().lower()[:MAX_LOCATION]
        fields.append("default_location")
    if clear_default_mpp:
        cohort.default_mpp = None
        fields.append("default_mpp")
    elif default_mpp is not None:
        if not MIN_MPP <= default_mpp <= MAX_MPP:
            raise InvalidInputError(
                f"default_mpp must be a resolution in um/px, not {default_mpp}.",
                details={"field": "default_mpp"},
            )
        cohort.default_mpp = default_mpp
        fields.append("default_mpp")
    if not fields:
        return cohort
    try:
        with transaction.atomic():
            cohort.save(update_fields=[*fields, "updated_at"])
    except IntegrityError:
        raise ConflictError(f"A cohort named {cohort.name!r} exists already.") from None
    return cohort


def cohort_delete(*, cohort: Cohort) -> None:
    """Delete a cohort with its slides, contours and everything derived from them.

    Files uploaded into the cohort (under SLIDES_DIR/<cohort id>), unfinished uploads and the
    slides' thumbnails and masks are removed once the deletion commits; imported files that
    live elsewhere are never touched.
    """
    from slides.services.uploads import upload_temp_path

    folders = [
        Path(settings.SLIDES_DIR) / str(cohort.pk),
        Path(settings.ARTIFACTS_DIR) / "slides" / str(cohort.pk),
    ]
    partial_uploads = [upload_temp_path(u) for u in Upload.objects.filter(cohort=cohort)]

    def remove() -> None:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        for path in partial_uploads:
            path.unlink(missing_ok=True)

    with transaction.atomic():
        cohort.delete()
        transaction.on_commit(remove)


# -- membership --------------------------------------------------------------------------------


def _check_role(role: str) -> str:
    if role not in Role.values:
        raise InvalidInputError(
            f"Unknown role {role!r}; expected one of {', '.join(Role.values)}.",
            details={"field": "role"},
        )
    return role


def member_add(*, cohort: Cohort, username: str, role: str) -> Membership:
    _check_role(role)
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise InvalidInputError(
            f"There is no user named {username!r}.", details={"field": "username"}
        )
    if user.pk == cohort.owner_id:
        raise ConflictError(f"{username} owns cohort {cohort.name!r} already.")
    try:
        with transaction.atomic():
            return Membership.objects.create(cohort=cohort, user=user, role=role)
    except IntegrityError:
        raise ConflictError(
            f"{username} is a member of {cohort.name!r} already: change the role instead."
        ) from None


def _membership(cohort: Cohort, user_id: int) -> Membership:
    if user_id == cohort.owner_id:
        raise ConflictError(
            f"The owner of {cohort.name!r} has every right and cannot be changed or removed."
        )
    membership = Membership.objects.filter(cohort=cohort, user_id=user_id).first()
    if membership is None:
        raise NotFoundError("No such member.")
    return membership


def member_change_role(*, cohort: Cohort, user_id: int, role: str) -> Membership:
    membership = _membership(cohort, user_id)
    membership.role = _check_role(role)
    membership.save(update_fields=["role"])
    return membership


def member_remove(*, cohort: Cohort, user_id: int) -> None:
    _membership(cohort, user_id).delete()


# -- slides ------------------------------------------------------------------------------------


@transaction.atomic
def slide_update(
    *,
    slide: Slide,
    label: str | None = None,
    split: str | None = None,
    location: str | None = None,
) -> Slide:
    """Set a slide's label or location by hand, or its case's split.

    A split belongs to the whole case (slides are never split apart from their case), so it is
    applied to every slide of the case and locked against re-splitting. A case that already
    trained a run keeps its split (ConflictError).
    """
    fields: list[str] = []
    if label is not None:
        if label not in Label.values:
            raise InvalidInputError(
                f"Unknown label {label!r}; expected one of {', '.join(Label.values)}.",
                details={"field": "label"},
            )
        slide.label = label
        slide.label_source = LabelSource.MANUAL if label != Label.UNKNOWN else LabelSource.NONE
        fields += ["label", "label_source"]
    if location is not None:
        slide.location = location.strip().lower()[:MAX_LOCATION]
        fields.append("location")
    if fields:
        slide.save(update_fields=[*fields, "updated_at"])
    if split is not None and split != slide.split:
        _set_case_split(slide, split)
    slide.refresh_from_db()
    return slide


def _set_case_split(slide: Slide, split: str) -> None:
    if split not in Split.values:
        raise InvalidInputError(
            f"Unknown split {split!r}; expected one of {', '.join(Split.values)}.",
            details={"field": "split"},
        )
    unit = split_unit(slide)
    protected: set[str] = set()
    for guard in _split_guards:
        protected |= guard(slide.cohort)
    if unit in protected:
        raise ConflictError(
            f"Case {unit} already trained a run: its split cannot change.",
            details={"case": unit},
        )
    same_unit = (
        Slide.objects.filter(cohort_id=slide.cohort_id, case_id=slide.case_id)
        if slide.case_id is not None
        else Slide.objects.filter(pk=slide.pk)
    )
    same_unit.update(split=split, split_locked=split != Split.UNASSIGNED)


# -- contours ----------------------------------------------------------------------------------


def annotations_create(
    *, slide: Slide, geojson: Mapping[str, Any] | list[Any], user: AbstractBaseUser | None
) -> list[Annotation]:
    """Store the contours of a GeoJSON Feature or FeatureCollection drawn on the slide.

    All or nothing: a malformed document raises AnnotationError and stores nothing.
    """
    annset = parse_geojson(geojson)
    if not annset.contours:
        raise AnnotationError(
            "The GeoJSON holds no polygon contour"
            + (f" ({'; '.join(annset.warnings)})" if annset.warnings else "."),
            details={"warnings": list(annset.warnings)},
        )
    if len(annset.contours) > MAX_CONTOURS_PER_POST:
        raise AnnotationError(
            f"At most {MAX_CONTOURS_PER_POST} contours may be sent at once.",
            details={"contours": len(annset.contours)},
        )
    too_long = sorted({c.label for c in annset.contours if len(c.label) > MAX_LABEL})
    if too_long:
        raise AnnotationError(
            f"Contour class names have at most {MAX_LABEL} characters: {', '.join(too_long)}.",
            details={"labels": too_long},
        )
    username = user.get_username() if user is not None else ""
    rows = [
        Annotation(
            slide=slide,
            label=c.label,
            name=c.name[:200],
            author=(c.author or username)[:150],
            source_format=annset.source_format,
            geometry=mapping(c.geometry),
            n_vertices=c.n_vertices,
            l0_area=float(c.geometry.area),
            created_by_id=user.pk if user is not None else None,
        )
        for c in annset.contours
    ]
    with transaction.atomic():
        return Annotation.objects.bulk_create(rows)


def annotation_delete(*, annotation: Annotation) -> None:
    annotation.delete()
