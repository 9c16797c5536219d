"""The evaluation API: scores of runs' maps against the contours, and sweep reports (the
paper's Table 1) as JSON, CSV and a picture. One small class per operation."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import django_filters
from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from evaluation.metrics.report import ReportRow, plot_grid, to_csv, to_json
from evaluation.models import Evaluation
from evaluation.reports import report_rows
from slides.apis import FileApi, ListApi, errors, file_response, validated
from slides.permissions import visible_cohorts
from slides.selectors import MAX_ID, IdFilter
from training import selectors as training_selectors

# Reports change whenever a run of the sweep finishes: browsers revalidate them.
REPORT_MAX_AGE_S: int | None = None


class EvaluationFilter(django_filters.FilterSet):
    run = IdFilter(field_name="run_id")
    cohort = IdFilter(field_name="run__cohort_id")
    sweep = IdFilter(field_name="run__sweep_id")
    split = django_filters.CharFilter(field_name="split")

    class Meta:
        model = Evaluation
        fields = ["run", "cohort", "sweep", "split"]


def _details(key: str, default: Any) -> Any:
    def get(self: Any, evaluation: Evaluation) -> Any:
        return evaluation.details.get(key, default)

    return get


class EvaluationSerializer(serializers.ModelSerializer):
    """The JSON form of evaluation.services.evaluation_as_dict, with the row's id and date."""

    per_location = serializers.SerializerMethodField()
    in_distribution = serializers.SerializerMethodField()
    out_of_location = serializers.SerializerMethodField()
    missing_contours = serializers.SerializerMethodField()

    class Meta:
        model = Evaluation
        fields = [
            "id", "run", "split", "auc_tissue", "auc_all", "per_location", "in_distribution",
            "out_of_location", "threshold", "threshold_source", "precision", "recall", "f1",
            "dice", "iou", "n_slides", "n_pixels", "missing_contours", "created_at",
        ]  # fmt: skip
        read_only_fields = fields

    get_per_location = extend_schema_field(OpenApiTypes.OBJECT)(_details("per_location", {}))
    get_in_distribution = extend_schema_field(OpenApiTypes.OBJECT)(_details("in_distribution", {}))
    get_out_of_location = extend_schema_field(OpenApiTypes.OBJECT)(_details("out_of_location", {}))
    get_missing_contours = extend_schema_field(
        serializers.ListField(child=serializers.CharField())
    )(_details("missing_contours", []))


class ReportQuerySerializer(serializers.Serializer):
    cohort = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_ID, help_text="Every run of the cohort."
    )
    sweep = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_ID, help_text="The runs of one sweep."
    )
    split = serializers.CharField(default="test", max_length=12)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("cohort") is None and attrs.get("sweep") is None:
            raise serializers.ValidationError({"cohort": "Give a cohort or a sweep."})
        return attrs


class ReportSerializer(serializers.Serializer):
    split = serializers.CharField()
    rows = serializers.ListField(child=serializers.DictField())
    grids = serializers.DictField(child=serializers.ListField(child=serializers.DictField()))


def _rows(request: Request) -> tuple[str, list[ReportRow]]:
    params = validated(ReportQuerySerializer, request.query_params)
    runs = training_selectors.report_runs(
        user=request.user, cohort_id=params.get("cohort"), sweep_id=params.get("sweep")
    )
    return params["split"], report_rows(runs, params["split"])


class EvaluationListApi(ListApi):
    serializer_class = EvaluationSerializer
    filterset_class = EvaluationFilter

    def get_queryset(self) -> QuerySet[Evaluation]:
        return Evaluation.objects.filter(
            run__cohort__in=visible_cohorts(self.request.user)
        ).order_by("-created_at", "-pk")

    @extend_schema(operation_id="evaluations_list", responses=EvaluationSerializer(many=True))
    def get(self, request: Request) -> Response:
        return self.list_response(self.get_queryset())


_REPORT_ERRORS = errors(400, 403, 404)


class ReportApi(FileApi):
    @extend_schema(
        operation_id="reports_retrieve",
        parameters=[ReportQuerySerializer],
        responses={200: ReportSerializer, **_REPORT_ERRORS},
        description="Pixelwise AUC (and threshold scores) of each run as rows and as the "
        "paper's alpha x beta grids.",
    )
    def get(self, request: Request) -> Response:
        split, rows = _rows(request)
        return Response({"split": split, **to_json(rows)})


class ReportCsvApi(FileApi):
    @extend_schema(
        operation_id="reports_csv_retrieve",
        parameters=[ReportQuerySerializer],
        responses={(200, "text/csv"): OpenApiTypes.STR, **_REPORT_ERRORS},
    )
    def get(self, request: Request) -> HttpResponse:
        split, rows = _rows(request)
        return file_response(
            to_csv(rows), "text/csv; charset=utf-8", max_age=REPORT_MAX_AGE_S,
            filename=f"report-{split}.csv",
        )  # fmt: skip


class ReportGridApi(FileApi):
    @extend_schema(
        operation_id="reports_grid_retrieve",
        parameters=[ReportQuerySerializer],
        responses={(200, "image/png"): OpenApiTypes.BINARY, **_REPORT_ERRORS},
        description="The four alpha x beta panels of pixelwise AUC as a picture.",
    )
    def get(self, request: Request) -> HttpResponse:
        split, rows = _rows(request)
        with tempfile.TemporaryDirectory() as folder:
            path = plot_grid(rows, Path(folder) / "grid.png", title=f"Pixelwise AUC on {split}")
            png = path.read_bytes()
        return file_response(png, "image/png", max_age=REPORT_MAX_AGE_S)
