"""Reads of the training app (no engine imports at module level: cheap to load in the web
process; the map readers import the engine's export module, and with it torch, on first use)."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import django_filters
from django.conf import settings
from django.db.models import Count, Q, QuerySet

from common.errors import InvalidInputError, NotFoundError
from slides.models import Cohort, Slide
from slides.permissions import VIEWER, AnyUser, require_role, visible_cohorts
from slides.selectors import IdFilter
from training.models import HeatMap, RunStatus, Sweep, TrainingRun

if TYPE_CHECKING:
    from training.mil.maps import SlideMap

# Map levels: probabilities are stored as round(p * 255).
MAP_LEVELS = 255


def trained_cases(cohort: Cohort) -> set[str]:
    """Cases whose slides trained or validated a run that is running or finished."""
    if not cohort.runs.filter(status__in=[RunStatus.RUNNING, RunStatus.SUCCEEDED]).exists():
        return set()
    return set(
        Slide.objects.filter(cohort=cohort, split__in=["train", "val"], case__isnull=False)
        .values_list("case__submitter_id", flat=True)
        .distinct()
    )


# -- filters -----------------------------------------------------------------------------------


class SweepFilter(django_filters.FilterSet):
    cohort = IdFilter(field_name="cohort_id")

    class Meta:
        model = Sweep
        fields = ["cohort"]


class RunFilter(django_filters.FilterSet):
    cohort = IdFilter(field_name="cohort_id")
    sweep = IdFilter(field_name="sweep_id")
    status = django_filters.ChoiceFilter(choices=RunStatus.choices)

    class Meta:
        model = TrainingRun
        fields = ["cohort", "sweep", "status"]


class HeatMapFilter(django_filters.FilterSet):
    run = IdFilter(field_name="run_id")
    slide = IdFilter(field_name="slide_id")
    cohort = IdFilter(field_name="run__cohort_id")

    class Meta:
        model = HeatMap
        fields = ["run", "slide", "cohort"]


# -- sweeps and runs ---------------------------------------------------------------------------


def sweep_list(*, user: AnyUser) -> QuerySet[Sweep]:
    """The user's sweeps with run counts per status (``runs_<status>``) and in all."""
    counts: dict[str, Any] = {
        f"runs_{s}": Count("runs", filter=Q(runs__status=s)) for s in RunStatus.values
    }
    return (
        Sweep.objects.filter(cohort__in=visible_cohorts(user))
        .annotate(runs_total=Count("runs"), **counts)
        .order_by("-created_at", "-pk")
    )


def sweep_get(*, user: AnyUser, sweep_id: int) -> Sweep:
    sweep = sweep_list(user=user).filter(pk=sweep_id).first()
    if sweep is None:
        raise NotFoundError("No such sweep.")
    return sweep


def run_list(*, user: AnyUser) -> QuerySet[TrainingRun]:
    return TrainingRun.objects.filter(cohort__in=visible_cohorts(user)).order_by(
        "-created_at", "-pk"
    )


def run_get(*, user: AnyUser, run_id: int, minimum: str = VIEWER) -> TrainingRun:
    run = TrainingRun.objects.filter(pk=run_id).select_related("cohort").first()
    if run is None:
        raise NotFoundError("No such run.")
    require_role(user, run.cohort, minimum, what="run")
    return run


# -- heatmaps ----------------------------------------------------------------------------------


def heatmap_list(*, user: AnyUser) -> QuerySet[HeatMap]:
    return (
        HeatMap.objects.filter(run__cohort__in=visible_cohorts(user))
        .select_related("slide")
        .order_by("run_id", "slide_id")
    )


def heatmap_get(*, user: AnyUser, heatmap_id: int) -> HeatMap:
    heatmap = heatmap_list(user=user).filter(pk=heatmap_id).first()
    if heatmap is None:
        raise NotFoundError("No such heatmap.")
    return heatmap


def heatmap_file(heatmap: HeatMap) -> Path:
    path = Path(settings.ARTIFACTS_DIR) / heatmap.map_path
    if not heatmap.map_path or not path.is_file():
        raise NotFoundError(
            f"The map file of heatmap {heatmap.pk} is missing.", details={"heatmap": heatmap.pk}
        )
    return path


def heatmap_map(heatmap: HeatMap) -> SlideMap:
    from training.mil.export import load_map_npz

    slide_map, _ = load_map_npz(heatmap_file(heatmap))
    return slide_map


def probability_level(p: float, name: str) -> float:
    """A probability in [0, 1] as a map level in [0, 255]."""
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise InvalidInputError(
            f"{name} is a probability in [0, 1], got {p}", details={"field": name}
        )
    return p * MAP_LEVELS


def heatmap_overlay_png(
    *,
    heatmap: HeatMap,
    colormap: str = "inferno",
    vmin: float = 0.0,
    vmax: float = 1.0,
    threshold: float | None = None,
    opacity: float = 1.0,
) -> bytes:
    """The whole map coloured as an RGBA PNG, one pixel per map cell (background and cells
    under ``threshold`` transparent). Limits and threshold are probabilities in [0, 1]."""
    from PIL import Image

    from training.mil.export import colorize

    lo, hi = probability_level(vmin, "vmin"), probability_level(vmax, "vmax")
    level = probability_level(threshold, "threshold") if threshold is not None else None
    slide_map = heatmap_map(heatmap)
    rgba = colorize(
        slide_map.probs, slide_map.valid, colormap=colormap, vmin=lo, vmax=hi,
        threshold=level, opacity=opacity,
    )  # fmt: skip
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    return out.getvalue()


def heatmap_contours_geojson(*, heatmap: HeatMap, threshold: float = 0.5) -> dict[str, Any]:
    """The regions where the tumor probability is at least ``threshold`` (0-1), as GeoJSON."""
    from training.mil.export import map_contours_geojson

    # The smallest stored level whose probability reaches the threshold (levels are p x 255).
    level = math.ceil(probability_level(threshold, "threshold") - 1e-9)
    return map_contours_geojson(heatmap_map(heatmap), level)


def heatmap_tiff_bytes(*, heatmap: HeatMap) -> bytes:
    """The pyramidal TIFF overlay: the exported file, or one written now for older maps."""
    stored = Path(settings.ARTIFACTS_DIR) / heatmap.tiff_path if heatmap.tiff_path else None
    if stored is not None and stored.is_file():
        return stored.read_bytes()
    from training.mil.export import write_pyramidal_tiff

    slide = heatmap.slide
    size = (slide.width or 0, slide.height or 0)
    with tempfile.TemporaryDirectory() as folder:
        path = write_pyramidal_tiff(
            heatmap_map(heatmap),
            Path(folder) / "map.tiff",
            slide_l0_size=size if all(size) else None,
        )
        return path.read_bytes()


def heatmap_provenance(heatmap: HeatMap) -> dict[str, Any]:
    """The map's provenance without server paths (the checkpoint is named, not located)."""
    provenance = dict(heatmap.provenance or {})
    if isinstance(provenance.get("checkpoint"), str):
        provenance["checkpoint"] = Path(provenance["checkpoint"]).name
    return provenance


def report_runs(
    *, user: AnyUser, cohort_id: int | None = None, sweep_id: int | None = None
) -> list[TrainingRun]:
    """The runs of one of the user's sweeps, or of one of the user's cohorts, ordered by
    (alpha, beta); NotFoundError for a sweep or cohort the user does not belong to."""
    if sweep_id is not None:
        runs = TrainingRun.objects.filter(sweep=sweep_get(user=user, sweep_id=sweep_id))
    elif cohort_id is not None:
        cohort = Cohort.objects.filter(pk=cohort_id).first()
        if cohort is None:
            raise NotFoundError("No such cohort.")
        require_role(user, cohort, VIEWER)
        runs = TrainingRun.objects.filter(cohort=cohort)
    else:
        raise InvalidInputError(
            "Name a cohort or a sweep to report on.", details={"field": "cohort"}
        )
    return list(runs.order_by("alpha", "beta", "pk"))
