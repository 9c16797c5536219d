"""Page URLs of the evaluation app."""

from django.urls import path

from evaluation import views

urlpatterns = [
    path("cohorts/<int:cohort_id>/report/", views.cohort_report_page, name="cohort-report"),
    path(
        "cohorts/<int:cohort_id>/report/curves.png",
        views.cohort_report_curves,
        name="cohort-report-curves",
    ),
]
