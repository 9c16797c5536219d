"""Reads of the slides app, always through the cohorts a user may see.

Every selector that takes a ``user`` returns only objects of cohorts the user owns or belongs
to; an object of another cohort is reported as absent (NotFoundError), exactly like one that
does not exist.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import django_filters
from django import forms
from django.conf import settings
from django.db import connection
from django.db.models import Case as SqlCase
from django.db.models import (
    CharField,
    Count,
    IntegerField,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from PIL import Image

from common.errors import ConflictError, NotFoundError
from slides.models import (
    Annotation,
    Case,
    Cohort,
    Label,
    Membership,
    Slide,
    SlideState,
    Split,
    Upload,
)
from slides.permissions import OWNER, VIEWER, AnyUser, require_role, visible_cohorts
from slides.services.annotations import annotation_set_for
from slides.services.tissue import THUMBNAIL_MAX_SIDE
from slides.wsi.annotations import to_asap_xml, to_geojson
from slides.wsi.reader import open_slide

# JPEG quality of thumbnails rendered on the fly (the stored ones are written by the tissue
# task): the overview is downscaled, so artefacts at 85 are invisible and the file stays small.
THUMBNAIL_JPEG_QUALITY = 85


class SlideNotReadyError(ConflictError):
    """The slide exists but has no readable file (awaiting its file, or unreadable)."""

    code = "slide_not_ready"


class NotComputedError(ConflictError):
    """A derived image (tissue mask) has not been computed yet: try again shortly."""

    code = "not_computed"


# -- filters -----------------------------------------------------------------------------------

# Ids are the database's bigint: a larger number names nothing (and would overflow a query).
MAX_ID = 2**63 - 1


class IdFilter(django_filters.NumberFilter):
    """Filter on an object id: a whole number the database can hold, else a 400."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


class CohortFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(field_name="name", lookup_expr="icontains")

    class Meta:
        model = Cohort
        fields = ["name"]


class CaseFilter(django_filters.FilterSet):
    cohort = IdFilter(field_name="cohort_id")
    submitter_id = django_filters.CharFilter(field_name="submitter_id", lookup_expr="iexact")

    class Meta:
        model = Case
        fields = ["cohort", "submitter_id"]


class SlideFilter(django_filters.FilterSet):
    cohort = IdFilter(field_name="cohort_id")
    case = IdFilter(field_name="case_id")
    label = django_filters.ChoiceFilter(choices=Label.choices)
    split = django_filters.ChoiceFilter(choices=Split.choices)
    state = django_filters.ChoiceFilter(choices=SlideState.choices)
    location = django_filters.CharFilter(field_name="location", lookup_expr="iexact")

    class Meta:
        model = Slide
        fields = ["cohort", "case", "label", "split", "state", "location"]


# -- cohorts and members -----------------------------------------------------------------------


def cohort_list(*, user: AnyUser) -> QuerySet[Cohort]:
    """The user's cohorts with ``role`` (owner or the member's role) and ``slide_count``."""
    if not user.is_authenticated:
        return Cohort.objects.none()
    member_role = Membership.objects.filter(cohort=OuterRef("pk"), user_id=user.pk).values("role")
    slide_count = (
        Slide.objects.filter(cohort=OuterRef("pk"))
        .order_by()
        .values("cohort")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        visible_cohorts(user)
        .select_related("owner")
        .annotate(
            role=SqlCase(
                When(owner_id=user.pk, then=Value(OWNER)),
                default=Subquery(member_role, output_field=CharField()),
                output_field=CharField(),
            ),
            slide_count=Coalesce(Subquery(slide_count, output_field=IntegerField()), 0),
        )
        .order_by("name")
    )


def cohort_get(*, user: AnyUser, cohort_id: int, minimum: str = VIEWER) -> Cohort:
    """One of the user's cohorts (annotated like :func:`cohort_list`), checked for ``minimum``."""
    cohort = Cohort.objects.filter(pk=cohort_id).first()
    if cohort is None:
        raise NotFoundError("No such cohort.")
    require_role(user, cohort, minimum)
    annotated = cohort_list(user=user).filter(pk=cohort_id).first()
    assert annotated is not None
    return annotated


def member_list(*, cohort: Cohort) -> list[dict[str, Any]]:
    """The owner first, then the members by user name: ``{user, username, role, since}``."""
    rows: list[dict[str, Any]] = [
        {
            "user": cohort.owner_id,
            "username": cohort.owner.get_username(),
            "role": OWNER,
            "since": cohort.created_at,
        }
    ]
    for m in (
        Membership.objects.filter(cohort=cohort)
        .exclude(user_id=cohort.owner_id)
        .select_related("user")
        .order_by("user__username")
    ):
        rows.append(
            {"user": m.user_id, "username": m.user.get_username(), "role": m.role,
             "since": m.created_at}
        )  # fmt: skip
    return rows


# -- cases and slides --------------------------------------------------------------------------


def case_list(*, user: AnyUser) -> QuerySet[Case]:
    return (
        Case.objects.filter(cohort__in=visible_cohorts(user))
        .annotate(slide_count=Count("slides"))
        .order_by("cohort_id", "submitter_id")
    )


def slide_list(*, user: AnyUser) -> QuerySet[Slide]:
    return (
        Slide.objects.filter(cohort__in=visible_cohorts(user))
        .select_related("case")
        .order_by("cohort_id", "original_filename")
    )


# The columns tiles need: served for every tile request, a slide row is read lean.
TILE_COLUMNS = ("id", "cohort_id", "original_filename", "file_path", "md5", "state",
                "error_message")  # fmt: skip


def _visible_slide_sql(columns: tuple[str, ...] | None = None) -> str:
    quote = connection.ops.quote_name
    slide, cohort = quote(Slide._meta.db_table), quote(Cohort._meta.db_table)
    membership = quote(Membership._meta.db_table)
    selected = ", ".join(f"s.{quote(c)}" for c in columns) if columns else "s.*"
    return (
        f"SELECT {selected} FROM {slide} s JOIN {cohort} c ON c.id = s.cohort_id "
        f"WHERE s.id = %s AND (c.owner_id = %s OR EXISTS (SELECT 1 FROM {membership} m "
        f"WHERE m.cohort_id = c.id AND m.user_id = %s))"
    )


def _visible_slide(user: AnyUser, slide_id: int, columns: tuple[str, ...] | None) -> Slide:
    # Every tile a viewer requests runs this: one hand-written query, because compiling the
    # ORM's membership subquery costs ~1 ms per request here, the raw query ~0.2 ms
    # (bench/RESULTS.md, DeepZoom tiles).
    user_id = user.pk if user.is_authenticated else None
    found = list(Slide.objects.raw(_visible_slide_sql(columns), [slide_id, user_id, user_id]))
    if not found:
        raise NotFoundError("No such slide.")
    return found[0]


def slide_for_tiles(*, user: AnyUser, slide_id: int) -> Slide:
    """A slide of one of the user's cohorts with only the fields DeepZoom needs loaded."""
    return _visible_slide(user, slide_id, TILE_COLUMNS)


def slide_get(*, user: AnyUser, slide_id: int, minimum: str = VIEWER) -> Slide:
    """A slide of one of the user's cohorts, checked for ``minimum``."""
    if minimum == VIEWER:
        return _visible_slide(user, slide_id, None)
    slide = Slide.objects.filter(pk=slide_id).select_related("cohort", "case").first()
    if slide is None:
        raise NotFoundError("No such slide.")
    require_role(user, slide.cohort, minimum, what="slide")
    return slide


def require_ready(slide: Slide) -> Slide:
    if slide.state != SlideState.READY or not slide.file_path:
        reason = slide.error_message or "its file has not been registered yet"
        raise SlideNotReadyError(
            f"Slide {slide.original_filename!r} is {slide.state}: {reason}.",
            details={"slide": slide.pk, "state": slide.state},
        )
    return slide


def slide_thumbnail_jpeg(*, slide: Slide) -> bytes:
    """The stored thumbnail, or one rendered now when the tissue task has not run yet."""
    require_ready(slide)
    if slide.thumbnail:
        stored = Path(settings.ARTIFACTS_DIR) / slide.thumbnail
        if stored.is_file():
            return stored.read_bytes()
    with open_slide(slide.file_path) as reader:
        pixels = reader.thumbnail(THUMBNAIL_MAX_SIDE)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=THUMBNAIL_JPEG_QUALITY)
    return out.getvalue()


def slide_tissue_mask_path(*, slide: Slide) -> Path:
    require_ready(slide)
    stored = Path(settings.ARTIFACTS_DIR) / slide.tissue_mask if slide.tissue_mask else None
    if stored is None or not stored.is_file():
        raise NotComputedError(
            f"The tissue mask of {slide.original_filename!r} is not computed yet; it is "
            "computed in the background after import.",
            details={"slide": slide.pk},
        )
    return stored


def slide_associated_png(*, slide: Slide, name: str) -> bytes:
    """An associated image (label, macro, thumbnail...) of the slide file, as PNG."""
    require_ready(slide)
    if name not in (slide.associated_images or []):
        raise NotFoundError(
            f"Slide {slide.original_filename!r} has no associated image {name!r}.",
            details={"available": list(slide.associated_images or [])},
        )
    with open_slide(slide.file_path) as reader:
        pixels = reader.associated_image(name)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


# -- annotations -------------------------------------------------------------------------------


def slide_annotations_geojson(*, slide: Slide) -> dict[str, Any]:
    """The slide's contours as a QuPath-compatible FeatureCollection; each feature carries the
    annotation's id (for DELETE /api/annotations/{id}) and who drew it."""
    rows = list(Annotation.objects.filter(slide=slide).order_by("pk"))
    collection = to_geojson(annotation_set_for(slide))
    for row, feature in zip(rows, collection["features"], strict=True):
        feature["id"] = row.pk
        feature["properties"]["id"] = row.pk
        feature["properties"]["created_by"] = row.created_by_id
        feature["properties"]["created_at"] = row.created_at.isoformat()
    return collection


def slide_annotations_asap_xml(*, slide: Slide) -> str:
    return to_asap_xml(annotation_set_for(slide))


def annotation_get(*, user: AnyUser, annotation_id: int, minimum: str = VIEWER) -> Annotation:
    annotation = Annotation.objects.filter(pk=annotation_id).select_related("slide__cohort").first()
    if annotation is None:
        raise NotFoundError("No such annotation.")
    require_role(user, annotation.slide.cohort, minimum, what="annotation")
    return annotation


# -- uploads -----------------------------------------------------------------------------------


def upload_list(*, cohort: Cohort) -> QuerySet[Upload]:
    return Upload.objects.filter(cohort=cohort).order_by("-created_at")


def upload_get(*, user: AnyUser, upload_id: int, minimum: str) -> Upload:
    upload = Upload.objects.filter(pk=upload_id).select_related("cohort").first()
    if upload is None:
        raise NotFoundError("No such upload.")
    require_role(user, upload.cohort, minimum, what="upload")
    return upload
