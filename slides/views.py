"""Pages of the slides app: the user's cohorts, one cohort (slides, uploads, members) and the
slide viewer. Server-rendered through the same selectors and services as the API; the pages'
JavaScript writes through the API (static/js/)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from common.errors import NotFoundError, PermissionDeniedError, TumorMapError
from slides import selectors
from slides.models import Cohort, Label, Role, Slide, SlideState, Split
from slides.permissions import MANAGER, OWNER, VIEWER, cohort_role, has_role
from slides.services import cohort_create
from slides.services.uploads import UPLOAD_EXTENSIONS

# Rows of the slide table per page: a TCGA project has a few hundred slides; the paper's
# cohort 6,481. One page stays quick to render and to scan.
SLIDES_PER_PAGE = 100
# One chunk of a resumable upload: a dropped connection loses at most this much, and a progress
# bar moves often enough. The server's limit is the upper bound.
UPLOAD_CHUNK_BYTES = 8 * 1024**2


@contextmanager
def page_errors() -> Iterator[None]:
    """The selectors' NotFoundError / PermissionDeniedError as Django's 404 / 403 pages."""
    try:
        yield
    except NotFoundError as exc:
        raise Http404(exc.message) from exc
    except PermissionDeniedError as exc:
        raise PermissionDenied(exc.message) from exc


def cohort_for_page(request: HttpRequest, cohort_id: int, minimum: str = VIEWER) -> Cohort:
    """One of the user's cohorts (annotated with ``role`` and ``slide_count``), else 404."""
    with page_errors():
        return selectors.cohort_get(user=request.user, cohort_id=cohort_id, minimum=minimum)


# -- cohorts -----------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def cohort_list_page(request: HttpRequest) -> HttpResponse:
    """The user's cohorts, and a form that creates one (the creator becomes its owner)."""
    error = ""
    values = {"name": "", "description": "", "default_location": ""}
    if request.method == "POST":
        values = {key: request.POST.get(key, "").strip() for key in values}
        try:
            cohort = cohort_create(
                owner=request.user,  # type: ignore[arg-type]
                name=values["name"],
                description=values["description"],
                default_location=values["default_location"],
            )
        except TumorMapError as exc:
            error = exc.message
        else:
            return redirect("cohort-detail", cohort_id=cohort.pk)
    cohorts = selectors.cohort_list(user=request.user)
    return render(
        request,
        "cohorts/list.html",
        {"cohorts": cohorts, "error": error, "values": values},
        status=400 if error else 200,
    )


def _slides_page(request: HttpRequest, cohort: Cohort) -> tuple[Page[Slide], dict[str, str]]:
    """One page of the cohort's slides with their contour counts, filtered by the query."""
    slides: QuerySet[Slide] = (
        Slide.objects.filter(cohort=cohort)
        .select_related("case")
        .annotate(contour_count=Count("annotations"))
        .order_by("original_filename")
    )
    filters = {}
    for name, choices in (
        ("label", Label.values),
        ("split", Split.values),
        ("state", SlideState.values),
    ):
        value = request.GET.get(name, "")
        if value in choices:
            slides = slides.filter(**{name: value})
            filters[name] = value
    paginator = Paginator(slides, SLIDES_PER_PAGE)
    return paginator.get_page(request.GET.get("page")), filters


def _split_summary(cohort: Cohort) -> list[dict[str, Any]]:
    """Slides per split with their labels, in the order train, val, test, unassigned."""
    counts: dict[tuple[str, str], int] = {
        (row["split"], row["label"]): row["n"]
        for row in Slide.objects.filter(cohort=cohort)
        .values("split", "label")
        .annotate(n=Count("pk"))
        .order_by()
    }
    summary = []
    for split, name in Split.choices:
        slides = sum(n for (s, _), n in counts.items() if s == split)
        if slides:
            summary.append(
                {
                    "split": split,
                    "name": name,
                    "slides": slides,
                    "tumor": counts.get((split, Label.TUMOR), 0),
                    "normal": counts.get((split, Label.NORMAL), 0),
                }
            )
    return summary


def _table_context(request: HttpRequest, cohort: Cohort) -> dict[str, Any]:
    page, filters = _slides_page(request, cohort)
    role = getattr(cohort, "role", None) or cohort_role(request.user, cohort)
    return {
        "cohort": cohort,
        "page": page,
        "filters": filters,
        "summary": _split_summary(cohort),
        "query": "&".join(f"{k}={v}" for k, v in filters.items()),
        "can_manage": has_role(role, MANAGER),
        "labels": Label.choices,
        "splits": Split.choices,
        "states": SlideState.choices,
    }


@login_required
@require_GET
def cohort_detail_page(request: HttpRequest, cohort_id: int) -> HttpResponse:
    cohort = cohort_for_page(request, cohort_id)
    context = _table_context(request, cohort)
    role: str = getattr(cohort, "role", "") or ""
    chunk = min(UPLOAD_CHUNK_BYTES, int(settings.TUMORMAP_UPLOAD_CHUNK_MAX_BYTES))
    context.update(
        {
            "role": role,
            "is_owner": role == OWNER,
            "members": selectors.member_list(cohort=cohort),
            "roles": Role.choices,
            "upload_config": {
                "cohort": cohort.pk,
                "chunkBytes": chunk,
                "maxBytes": int(settings.TUMORMAP_MAX_UPLOAD_BYTES),
                "extensions": sorted(UPLOAD_EXTENSIONS),
            },
        }
    )
    return render(request, "cohorts/detail.html", context)


@login_required
@require_GET
def cohort_slides_table(request: HttpRequest, cohort_id: int) -> HttpResponse:
    """The slide table alone: the cohort page swaps it in after uploads and label files."""
    cohort = cohort_for_page(request, cohort_id)
    return render(request, "cohorts/_slides_table.html", _table_context(request, cohort))


# -- viewer ------------------------------------------------------------------------------------


def _neighbours(slide: Slide) -> tuple[Slide | None, Slide | None]:
    """The previous and next slide of the same cohort and split, by file name."""
    same = Slide.objects.filter(cohort_id=slide.cohort_id, split=slide.split).only(
        "pk", "original_filename"
    )
    previous = (
        same.filter(original_filename__lt=slide.original_filename)
        .order_by("-original_filename")
        .first()
    )
    following = (
        same.filter(original_filename__gt=slide.original_filename)
        .order_by("original_filename")
        .first()
    )
    return previous, following


def _int_param(request: HttpRequest, name: str) -> int | None:
    value = request.GET.get(name, "")
    return int(value) if value.isdigit() else None


@login_required
@require_GET
def slide_viewer_page(request: HttpRequest, slide_id: int) -> HttpResponse:
    """The slide in OpenSeadragon with a run's tumor map, the contours and a second run."""
    with page_errors():
        slide = selectors.slide_get(user=request.user, slide_id=slide_id)
    cohort = Cohort.objects.get(pk=slide.cohort_id)
    previous, following = _neighbours(slide)
    ready = slide.state == SlideState.READY and bool(slide.file_path)
    config = {
        "slide": slide.pk,
        "name": slide.original_filename,
        "width": slide.width,
        "height": slide.height,
        "mpp": slide.mpp,
        "mppAssumed": slide.mpp_assumed,
        "label": slide.label,
        "run": _int_param(request, "run"),
        "compare": _int_param(request, "compare"),
    }
    return render(
        request,
        "viewer/slide.html",
        {
            "slide": slide,
            "cohort": cohort,
            "ready": ready,
            "previous": previous,
            "following": following,
            "contour_count": slide.annotations.count(),
            "viewer_config": config,
        },
    )
