from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_healthz_reports_each_check(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "storage"}
    assert all(check["ok"] for check in body["checks"].values())
    assert response["Cache-Control"].startswith("max-age=0")


def test_healthz_is_public(client: Client) -> None:
    assert client.get("/healthz").status_code == 200


def test_unwritable_storage_makes_healthz_unavailable(
    client: Client, settings, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the slides folder should be")
    settings.SLIDES_DIR = blocker
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["storage"]["ok"] is False
    # The other checks still ran and are reported.
    assert body["checks"]["database"]["ok"] is True


def test_unreachable_broker_makes_healthz_unavailable(client: Client) -> None:
    from config.celery import app

    saved = app.conf.broker_url
    # A closed port on loopback: the connection is refused at once.
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        response = client.get("/healthz")
    finally:
        app.conf.broker_url = saved
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False


def test_healthz_rejects_writes(client: Client) -> None:
    assert client.post("/healthz").status_code == 405


def test_home_page_and_admin_login(client: Client) -> None:
    home = client.get("/")
    assert home.status_code == 200
    assert b"TumorMap" in home.content
    assert client.get("/admin/login/").status_code == 200
    assert client.get("/accounts/login/").status_code == 200
