"""Fixtures shared by the whole suite: real services for integration tests, shared data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_service(reason: str) -> None:
    """Skip locally, but FAIL under CI: there the services must run, never be skipped."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: integration tests must not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        require_service(f"the shared test data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a real Redis server (REDIS_URL, else the local default), checked reachable."""
    import redis

    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        require_service(f"Redis is not reachable at {url}: {exc}")
    return url


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Throttle counters live in Django's cache: no test inherits another's attempts."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _ci_runs_on_postgresql(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under CI every database test must run on PostgreSQL, as production does."""
    if IN_CI and request.node.get_closest_marker("django_db"):
        from django.db import connection

        assert connection.vendor == "postgresql", (
            "CI=true but the suite runs on " + connection.vendor + ": set DATABASE_URL"
        )
    yield


@pytest.fixture(scope="session")
def tiny_cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small synthetic slides (four tumor, four normal) with labels and contours."""
    from slides.wsi.synthetic import write_demo_cohort

    folder = tmp_path_factory.mktemp("tiny-cohort")
    write_demo_cohort(folder, n_slides=8, seed=7, width=1536, height=1024)
    return folder


@pytest.fixture
def tiny_cohort(db: None, tiny_cohort_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny synthetic cohort imported with its contours; splits fixed so that train, val
    and test each hold tumor and normal slides."""
    from django.contrib.auth import get_user_model

    from slides.services import cohort_create, cohort_import
    from slides.services.annotations import annotations_import_files
    from slides.wsi.label_files import LabelRow, parse_label_csv

    owner = get_user_model().objects.create_user("trainer", password="pw-trainer-1")
    cohort = cohort_create(name="tiny", owner=owner)
    rows = sorted(parse_label_csv((tiny_cohort_dir / "labels.csv").read_bytes()),
                  key=lambda r: r.filename)  # fmt: skip
    splits = ["train", "train", "train", "train", "val", "val", "test", "test"]
    labels = [
        LabelRow(r.filename, r.label, r.case_id, r.location, split)
        for r, split in zip(rows, splits, strict=True)
    ]
    cohort_import(cohort=cohort, path=tiny_cohort_dir, labels=labels)
    annotations_import_files(cohort=cohort, files=sorted(tiny_cohort_dir.glob("*.geojson")))
    return cohort
