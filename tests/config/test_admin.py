from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client

pytestmark = pytest.mark.django_db


def test_every_registered_model_has_a_working_admin_list(admin_client: Client) -> None:
    models = [
        m for m in admin.site._registry if m._meta.app_label in {"slides", "training", "evaluation"}
    ]
    assert {m.__name__ for m in models} >= {"Cohort", "Slide", "Case", "TrainingRun", "HeatMap",
                                            "Sweep", "Evaluation"}  # fmt: skip
    for model in models:
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        assert admin_client.get(url).status_code == 200, url


def test_admin_requires_staff(client: Client) -> None:
    response = client.get("/admin/slides/slide/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
