"""The training API: sweeps, runs (queue, cancel, retry) and the tumor maps they inferred.

One small class per operation. The engine (and torch) is never imported here; maps are read
through :mod:`training.selectors`.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from common.errors import ConfigurationError
from slides import selectors as slide_selectors
from slides.apis import OBJECT_ERRORS, Api, FileApi, ListApi, errors, file_response, validated
from slides.permissions import MANAGER
from slides.selectors import MAX_ID
from training import selectors
from training.mil.config import PRETRAINED_CHOICES, RunConfig
from training.models import HeatMap, Sweep, TrainingRun
from training.services.runs import run_create, run_request_cancel, run_retry, sweep_create

# Maps are recomputed only when their run infers again: a browser may keep them an hour.
MAP_MAX_AGE_S = 3600


# -- serializers -------------------------------------------------------------------------------


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "description": '"paper" or pairs like "0.2:0,0.4:0.2"'},
            {
                "type": "array",
                "items": {"type": "array", "items": {"type": "number"}, "minItems": 2,
                          "maxItems": 2},
            },
        ]
    }
)  # fmt: skip
class GridField(serializers.Field):
    """``"paper"``, ``"A:B,A:B"`` or ``[[alpha, beta], ...]``."""

    default_error_messages = {
        "invalid": 'A grid is "paper", "A:B,A:B,..." or a list of [alpha, beta] pairs.'
    }

    def to_internal_value(self, data: Any) -> str | list[tuple[float, float]]:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and all(
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
            for pair in data
        ):
            return [(float(a), float(b)) for a, b in data]
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


def _check_settings(value: dict[str, Any]) -> dict[str, Any]:
    # A path to weights on the server is for the command line: through the web it would let a
    # manager make a worker unpickle any file it can read.
    pretrained = value.get("pretrained", "imagenet")
    if pretrained not in PRETRAINED_CHOICES:
        raise ConfigurationError(
            f"pretrained must be one of {', '.join(PRETRAINED_CHOICES)} through the API.",
            details={"field": "pretrained"},
        )
    return value


class SweepCreateSerializer(serializers.Serializer):
    cohort = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    grid = GridField(default="paper")
    settings = serializers.DictField(
        child=serializers.JSONField(), required=False, default=dict,
        help_text="RunConfig fields shared by every run (epochs, patches_per_slide, ...).",
    )  # fmt: skip
    evaluate = serializers.BooleanField(default=True)
    name = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)


class SweepSerializer(serializers.ModelSerializer):
    runs_total = serializers.IntegerField(read_only=True)
    runs_queued = serializers.IntegerField(read_only=True)
    runs_running = serializers.IntegerField(read_only=True)
    runs_succeeded = serializers.IntegerField(read_only=True)
    runs_failed = serializers.IntegerField(read_only=True)
    runs_cancelled = serializers.IntegerField(read_only=True)
    grid = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))

    class Meta:
        model = Sweep
        fields = [
            "id", "cohort", "name", "grid", "shared_settings", "evaluate", "created_by",
            "created_at", "runs_total", "runs_queued", "runs_running", "runs_succeeded",
            "runs_failed", "runs_cancelled",
        ]  # fmt: skip
        read_only_fields = fields


class RunCreateSerializer(serializers.Serializer):
    cohort = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    alpha = serializers.FloatField()
    beta = serializers.FloatField()
    settings = serializers.DictField(child=serializers.JSONField(), required=False, default=dict)


RUN_FIELDS = [
    "id", "cohort", "sweep", "alpha", "beta", "status", "cancel_requested", "progress",
    "metric_name", "best_metric", "best_epoch", "epochs_completed", "attempts", "queue",
    "device", "worker", "error", "created_by", "created_at", "enqueued_at", "started_at",
    "heartbeat_at", "finished_at", "duration_s",
]  # fmt: skip


class RunSerializer(serializers.ModelSerializer):
    duration_s = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = TrainingRun
        fields = RUN_FIELDS
        read_only_fields = fields


class RunDetailSerializer(RunSerializer):
    class Meta:
        model = TrainingRun
        fields = [*RUN_FIELDS, "config", "history", "log_tail", "code_version"]
        read_only_fields = fields


class HeatMapSerializer(serializers.ModelSerializer):
    slide_name = serializers.CharField(source="slide.original_filename", read_only=True)
    l0_origin = serializers.SerializerMethodField()
    provenance = serializers.SerializerMethodField()
    urls = serializers.SerializerMethodField()

    class Meta:
        model = HeatMap
        fields = [
            "id", "run", "slide", "slide_name", "epoch", "rows", "cols", "l0_origin",
            "l0_cell_size", "tissue_cells", "provenance", "urls", "created_at",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.FloatField()))
    def get_l0_origin(self, heatmap: HeatMap) -> list[float]:
        return [heatmap.l0_origin_x, heatmap.l0_origin_y]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_provenance(self, heatmap: HeatMap) -> dict[str, Any]:
        return selectors.heatmap_provenance(heatmap)

    @extend_schema_field(serializers.DictField(child=serializers.CharField()))
    def get_urls(self, heatmap: HeatMap) -> dict[str, str]:
        kwargs = {"heatmap_id": heatmap.pk}
        return {
            name: reverse(f"api-heatmap-{name}", kwargs=kwargs)
            for name in ("overlay", "raw", "tiff", "contours")
        }


class OverlayQuerySerializer(serializers.Serializer):
    colormap = serializers.CharField(default="inferno", max_length=64)
    vmin = serializers.FloatField(default=0.0, min_value=0.0, max_value=1.0)
    vmax = serializers.FloatField(default=1.0, min_value=0.0, max_value=1.0)
    threshold = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    opacity = serializers.FloatField(default=1.0, min_value=0.0, max_value=1.0)


class ContoursQuerySerializer(serializers.Serializer):
    threshold = serializers.FloatField(default=0.5, min_value=0.0, max_value=1.0)


# -- sweeps ------------------------------------------------------------------------------------


class SweepListApi(ListApi):
    serializer_class = SweepSerializer
    filterset_class = selectors.SweepFilter

    def get_queryset(self) -> QuerySet[Sweep]:
        return selectors.sweep_list(user=self.request.user)

    @extend_schema(operation_id="sweeps_list", responses=SweepSerializer(many=True))
    def get(self, request: Request) -> Response:
        return self.list_response(self.get_queryset())

    @extend_schema(
        operation_id="sweeps_create",
        request=SweepCreateSerializer,
        responses={201: SweepSerializer, **errors(400, 403, 404)},
        description="Create one run per (alpha, beta) of the grid and queue them (manager+).",
    )
    def post(self, request: Request) -> Response:
        data = validated(SweepCreateSerializer, request.data)
        cohort = slide_selectors.cohort_get(
            user=request.user, cohort_id=data["cohort"], minimum=MANAGER
        )
        sweep = sweep_create(
            cohort=cohort, grid=data["grid"], shared=_check_settings(data["settings"]),
            created_by=request.user, evaluate=data["evaluate"], name=data["name"],  # type: ignore[arg-type]
        )  # fmt: skip
        sweep = selectors.sweep_get(user=request.user, sweep_id=sweep.pk)
        return Response(SweepSerializer(sweep).data, status=status.HTTP_201_CREATED)


class SweepDetailApi(Api):
    @extend_schema(
        operation_id="sweeps_retrieve", responses={200: SweepSerializer, **OBJECT_ERRORS}
    )
    def get(self, request: Request, sweep_id: int) -> Response:
        return Response(
            SweepSerializer(selectors.sweep_get(user=request.user, sweep_id=sweep_id)).data
        )


# -- runs --------------------------------------------------------------------------------------


class RunListApi(ListApi):
    serializer_class = RunSerializer
    filterset_class = selectors.RunFilter

    def get_queryset(self) -> QuerySet[TrainingRun]:
        return selectors.run_list(user=self.request.user)

    @extend_schema(operation_id="runs_list", responses=RunSerializer(many=True))
    def get(self, request: Request) -> Response:
        return self.list_response(self.get_queryset())

    @extend_schema(
        operation_id="runs_create",
        request=RunCreateSerializer,
        responses={201: RunDetailSerializer, **errors(400, 403, 404)},
        description="Record one run of (alpha, beta) with the given settings and queue it "
        "(manager+).",
    )
    def post(self, request: Request) -> Response:
        data = validated(RunCreateSerializer, request.data)
        cohort = slide_selectors.cohort_get(
            user=request.user, cohort_id=data["cohort"], minimum=MANAGER
        )
        settings = _check_settings(dict(data["settings"]))
        config = RunConfig.from_dict({**settings, "alpha": data["alpha"], "beta": data["beta"]})
        run = run_create(cohort=cohort, config=config, created_by=request.user, enqueue=True)  # type: ignore[arg-type]
        return Response(RunDetailSerializer(run).data, status=status.HTTP_201_CREATED)


class RunDetailApi(Api):
    @extend_schema(
        operation_id="runs_retrieve", responses={200: RunDetailSerializer, **OBJECT_ERRORS}
    )
    def get(self, request: Request, run_id: int) -> Response:
        run = selectors.run_get(user=request.user, run_id=run_id)
        return Response(RunDetailSerializer(run).data)


class RunCancelApi(Api):
    @extend_schema(
        operation_id="runs_cancel",
        request=None,
        responses={200: RunDetailSerializer, **errors(403, 404, 409)},
        description="Cancel a queued run at once, a running one at its next step (manager+).",
    )
    def post(self, request: Request, run_id: int) -> Response:
        run = selectors.run_get(user=request.user, run_id=run_id, minimum=MANAGER)
        return Response(RunDetailSerializer(run_request_cancel(run=run)).data)


class RunRetryApi(Api):
    @extend_schema(
        operation_id="runs_retry",
        request=None,
        responses={200: RunDetailSerializer, **errors(403, 404, 409)},
        description="Queue a failed or cancelled run again; it resumes from its last "
        "checkpoint (manager+).",
    )
    def post(self, request: Request, run_id: int) -> Response:
        run = selectors.run_get(user=request.user, run_id=run_id, minimum=MANAGER)
        return Response(RunDetailSerializer(run_retry(run=run)).data)


# -- heatmaps ----------------------------------------------------------------------------------


class HeatMapListApi(ListApi):
    serializer_class = HeatMapSerializer
    filterset_class = selectors.HeatMapFilter

    def get_queryset(self) -> QuerySet[HeatMap]:
        return selectors.heatmap_list(user=self.request.user)

    @extend_schema(operation_id="heatmaps_list", responses=HeatMapSerializer(many=True))
    def get(self, request: Request) -> Response:
        return self.list_response(self.get_queryset())


class HeatMapDetailApi(Api):
    @extend_schema(
        operation_id="heatmaps_retrieve", responses={200: HeatMapSerializer, **OBJECT_ERRORS}
    )
    def get(self, request: Request, heatmap_id: int) -> Response:
        heatmap = selectors.heatmap_get(user=request.user, heatmap_id=heatmap_id)
        return Response(HeatMapSerializer(heatmap).data)


class HeatMapOverlayApi(FileApi):
    @extend_schema(
        operation_id="heatmaps_overlay_retrieve",
        parameters=[OverlayQuerySerializer],
        responses={(200, "image/png"): OpenApiTypes.BINARY, **errors(400, 403, 404)},
        description="The whole map coloured (one pixel per map cell), transparent off tissue "
        "and under the threshold. vmin, vmax, threshold and opacity are in [0, 1]; colormap is "
        "any matplotlib colour map name.",
    )
    def get(self, request: Request, heatmap_id: int) -> HttpResponse:
        heatmap = selectors.heatmap_get(user=request.user, heatmap_id=heatmap_id)
        params = validated(OverlayQuerySerializer, request.query_params)
        png = selectors.heatmap_overlay_png(heatmap=heatmap, **params)
        return file_response(png, "image/png", max_age=MAP_MAX_AGE_S)


class HeatMapRawApi(FileApi):
    @extend_schema(
        operation_id="heatmaps_raw_retrieve",
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **OBJECT_ERRORS},
        description="The map archive (.npz: probs x 255, valid mask, geometry, provenance).",
    )
    def get(self, request: Request, heatmap_id: int) -> FileResponse:
        heatmap = selectors.heatmap_get(user=request.user, heatmap_id=heatmap_id)
        path = selectors.heatmap_file(heatmap)
        response = FileResponse(
            path.open("rb"),
            as_attachment=True,
            filename=f"map-run{heatmap.run_id}-slide{heatmap.slide_id}.npz",
            content_type="application/octet-stream",
        )
        response["Cache-Control"] = f"private, max-age={MAP_MAX_AGE_S}"
        return response


class HeatMapTiffApi(FileApi):
    @extend_schema(
        operation_id="heatmaps_tiff_retrieve",
        responses={(200, "image/tiff"): OpenApiTypes.BINARY, **OBJECT_ERRORS},
        description="The map as a pyramidal TIFF that QuPath and ASAP overlay on the slide.",
    )
    def get(self, request: Request, heatmap_id: int) -> HttpResponse:
        heatmap = selectors.heatmap_get(user=request.user, heatmap_id=heatmap_id)
        return file_response(
            selectors.heatmap_tiff_bytes(heatmap=heatmap), "image/tiff",
            max_age=MAP_MAX_AGE_S,
            filename=f"map-run{heatmap.run_id}-slide{heatmap.slide_id}.tiff",
        )  # fmt: skip


class HeatMapContoursApi(FileApi):
    @extend_schema(
        operation_id="heatmaps_contours_retrieve",
        parameters=[ContoursQuerySerializer],
        responses={(200, "application/geo+json"): OpenApiTypes.OBJECT, **errors(400, 403, 404)},
        description="Regions with a tumor probability of at least threshold (0-1) as a "
        "QuPath-compatible GeoJSON FeatureCollection in level-0 pixels.",
    )
    def get(self, request: Request, heatmap_id: int) -> HttpResponse:
        heatmap = selectors.heatmap_get(user=request.user, heatmap_id=heatmap_id)
        params = validated(ContoursQuerySerializer, request.query_params)
        collection = selectors.heatmap_contours_geojson(heatmap=heatmap, **params)
        return file_response(json.dumps(collection), "application/geo+json", max_age=MAP_MAX_AGE_S)
