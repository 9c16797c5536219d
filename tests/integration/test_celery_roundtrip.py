"""A real round trip through the queues: a `celery worker` process per queue consumes a trivial
task sent by another process, on Redis and on the embedded (filesystem) broker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

pytestmark = [pytest.mark.integration]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEST_REDIS_DB = 15  # a database of its own, so a test never eats a developer's queued work

SEND_BOTH = """
import json, django
django.setup()
from config.celery import ping, ping_gpu
cpu = ping.delay().get(timeout=60)
gpu = ping_gpu.delay().get(timeout=60)
print(json.dumps({"cpu": cpu, "gpu": gpu}))
"""


def _send(env: dict[str, str]) -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", SEND_BOTH],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, dict[str, object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _roundtrip(start_worker: Callable[..., object], env: dict[str, str]) -> None:
    cpu_worker = start_worker(queues="cpu", env=env)
    gpu_worker = start_worker(queues="gpu", env=env)
    result = _send(env)
    # Each task was consumed by the worker of the queue its route names, nobody else.
    assert result["cpu"]["queue"] == "cpu"
    assert result["cpu"]["hostname"] == cpu_worker.hostname  # type: ignore[attr-defined]
    assert result["gpu"]["queue"] == "gpu"
    assert result["gpu"]["hostname"] == gpu_worker.hostname  # type: ignore[attr-defined]


def test_roundtrip_on_redis(start_worker, worker_env, redis_url: str, tmp_path: Path) -> None:
    import redis

    parts = urlsplit(redis_url)
    url = urlunsplit(parts._replace(path=f"/{TEST_REDIS_DB}"))
    redis.Redis.from_url(url).flushdb()
    env = worker_env(CELERY_BROKER_URL=url, REDIS_URL=url, TUMORMAP_VAR_DIR=str(tmp_path))
    _roundtrip(start_worker, env)


def test_roundtrip_on_embedded_broker(start_worker, worker_env, tmp_path: Path) -> None:
    env = worker_env(TUMORMAP_VAR_DIR=str(tmp_path))
    env.pop("CELERY_BROKER_URL", None)
    env.pop("REDIS_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    _roundtrip(start_worker, env)
    assert (tmp_path / "broker" / "queue").is_dir()
