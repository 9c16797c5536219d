"""Page URLs of the slides app (HTML for people; the API is under /api/)."""

from django.urls import path

from slides import views

urlpatterns = [
    path("cohorts/", views.cohort_list_page, name="cohort-list"),
    path("cohorts/<int:cohort_id>/", views.cohort_detail_page, name="cohort-detail"),
    path(
        "cohorts/<int:cohort_id>/slides-table",
        views.cohort_slides_table,
        name="cohort-slides-table",
    ),
    path("slides/<int:slide_id>/", views.slide_viewer_page, name="slide-viewer"),
]
