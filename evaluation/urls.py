"""URLs of the evaluation API, included under /api/."""

from django.urls import path

from evaluation import apis

urlpatterns = [
    path("evaluations/", apis.EvaluationListApi.as_view(), name="api-evaluation-list"),
    path("reports/", apis.ReportApi.as_view(), name="api-report"),
    path("reports/csv", apis.ReportCsvApi.as_view(), name="api-report-csv"),
    path("reports/grid.png", apis.ReportGridApi.as_view(), name="api-report-grid"),
]
