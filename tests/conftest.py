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
def _ci_runs_on_postgresql(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under CI every database test must run on PostgreSQL, as production does."""
    if IN_CI and request.node.get_closest_marker("django_db"):
        from django.db import connection

        assert connection.vendor == "postgresql", (
            "CI=true but the suite runs on " + connection.vendor + ": set DATABASE_URL"
        )
    yield
