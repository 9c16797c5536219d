"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, and the real Celery
worker fixtures of the integration tests (imported from tests/integration/conftest.py, which
stays where it is)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("TUMORMAP_CHROMIUM", "/usr/bin/chromium"))
# Flags for a headless Chromium in a container: no sandbox (root), no GPU, and nothing that
# reaches out to the network on its own.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
IN_CI = os.environ.get("CI", "").lower() == "true"


def _load_integration_conftest() -> Any:
    """tests/integration/conftest.py under a name of its own: its worker fixtures are reused
    here without moving them (and without clashing with the conftest pytest loads there)."""
    path = PROJECT_ROOT / "tests" / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tumormap_integration_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_integration = _load_integration_conftest()
start_worker = _integration.start_worker
worker_env = _integration.worker_env
database_url = _integration.database_url


def _unavailable(reason: str) -> None:
    """Skip with the reason locally; under CI=true the browser must be there: fail."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser tests must not skip; run .ci/browser.sh)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        found = shutil.which("chromium")
        if found is None:
            _unavailable(
                f"Chromium is not installed at {CHROMIUM}: install Debian's package "
                "(apt-get install chromium chromium-driver, or .ci/browser.sh)"
            )
        return Path(str(found))
    return CHROMIUM


@pytest.fixture
def browser(chromium_executable: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless Chromium for one test. Playwright's synchronous API keeps an asyncio loop
    in this thread, which Django takes for an async context: the test's ORM calls (never
    concurrent with the loop's own work) are allowed for the browser's lifetime only."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    from django.db import connections

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(chromium_executable), args=CHROMIUM_ARGS
        )
        yield instance
        instance.close()
        # While Playwright's loop is alive, the ORM hands out connections of another context
        # than the test's (asgiref locals), which pytest-django's teardown never sees: left
        # open, one kept PostgreSQL from dropping the test database at the end of the session.
        connections.close_all()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def embedded_broker(worker_env: Any) -> Iterator[dict[str, str]]:
    """Point this process (and the live server's threads) and a worker's environment at the
    same filesystem broker folders under VAR_DIR; the previous broker is restored after."""
    from django.conf import settings

    from config.celery import app

    saved = app.conf.broker_url, app.conf.broker_transport_options
    env = worker_env(DATABASE_URL=database_url())
    for name in ("CELERY_BROKER_URL", "REDIS_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)
    folder = Path(settings.VAR_DIR) / "broker"
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS or {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
    }
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        Path(str(options[key])).mkdir(parents=True, exist_ok=True)
    app.conf.broker_transport_options = options
    app.conf.broker_url = "filesystem://localhost/"
    app._after_fork()  # forget the connection pools of the previous broker
    yield env
    app.conf.broker_url, app.conf.broker_transport_options = saved
    app._after_fork()
