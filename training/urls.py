"""URLs of the training API, included under /api/."""

from django.urls import path

from training import apis

urlpatterns = [
    path("sweeps/", apis.SweepListApi.as_view(), name="api-sweep-list"),
    path("sweeps/<int:sweep_id>/", apis.SweepDetailApi.as_view(), name="api-sweep-detail"),
    path("runs/", apis.RunListApi.as_view(), name="api-run-list"),
    path("runs/<int:run_id>/", apis.RunDetailApi.as_view(), name="api-run-detail"),
    path("runs/<int:run_id>/cancel", apis.RunCancelApi.as_view(), name="api-run-cancel"),
    path("runs/<int:run_id>/retry", apis.RunRetryApi.as_view(), name="api-run-retry"),
    path("heatmaps/", apis.HeatMapListApi.as_view(), name="api-heatmap-list"),
    path("heatmaps/<int:heatmap_id>/", apis.HeatMapDetailApi.as_view(), name="api-heatmap-detail"),
    path(
        "heatmaps/<int:heatmap_id>/overlay.png",
        apis.HeatMapOverlayApi.as_view(),
        name="api-heatmap-overlay",
    ),
    path("heatmaps/<int:heatmap_id>/raw", apis.HeatMapRawApi.as_view(), name="api-heatmap-raw"),
    path("heatmaps/<int:heatmap_id>/tiff", apis.HeatMapTiffApi.as_view(), name="api-heatmap-tiff"),
    path(
        "heatmaps/<int:heatmap_id>/contours.geojson",
        apis.HeatMapContoursApi.as_view(),
        name="api-heatmap-contours",
    ),
]
