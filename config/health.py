"""Liveness and readiness: is the database answering, the broker reachable, storage writable?"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection

from config.celery import app as celery_app

# A load balancer polls this endpoint every few seconds: a broker that does not answer within
# this time is reported down rather than holding the request.
BROKER_TIMEOUT_S = 3


def check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def check_broker() -> str:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
        return str(conn.transport_cls)


def check_storage() -> str:
    for folder in (settings.SLIDES_DIR, settings.ARTIFACTS_DIR, settings.MEDIA_ROOT):
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".healthz-") as probe:
            probe.write(b"ok")
            probe.flush()
    return "writable"


CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
}


def run_checks() -> tuple[bool, dict[str, dict[str, object]]]:
    """Run every check; one failing check never hides the others."""
    results: dict[str, dict[str, object]] = {}
    healthy = True
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            detail = check()
            results[name] = {"ok": True, "detail": detail}
        except Exception as exc:  # a health check reports every failure, whatever its type
            healthy = False
            results[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return healthy, results
