"""Page URLs of the training app."""

from django.urls import path

from training import views

urlpatterns = [
    path("cohorts/<int:cohort_id>/training/", views.cohort_training_page, name="cohort-training"),
    path("runs/<int:run_id>/", views.run_detail_page, name="run-detail"),
]
