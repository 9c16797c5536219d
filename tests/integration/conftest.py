"""Real worker processes for integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Workers load Django and Celery before consuming: generous, because CI machines are busy.
WORKER_READY_TIMEOUT_S = 60.0


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[str], log_path: Path, hostname: str) -> None:
        self.proc = proc
        self.log_path = log_path
        self.hostname = hostname

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _worker_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env.update(overrides)
    return env


def database_url() -> str:
    """The URL of the database this test runs on (the test database), for worker processes."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    if connection.vendor == "postgresql":
        auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
        return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    raise AssertionError(f"unsupported database {connection.vendor}")


@pytest.fixture
def worker_env() -> Callable[..., dict[str, str]]:
    """Build the environment of a worker process: this test's settings plus overrides."""
    return _worker_env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real `celery worker` processes; each is stopped at the end of the test."""
    workers: list[WorkerProcess] = []

    def start(*, queues: str, env: dict[str, str], pool: str = "solo") -> WorkerProcess:
        hostname = f"{queues.replace(',', '-')}-{uuid.uuid4().hex[:8]}@tests"
        log_path = tmp_path / f"worker-{hostname}.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", "config", "worker",
            "-Q", queues, "--pool", pool, "--concurrency", "1",
            "--hostname", hostname, "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        log = log_path.open("w")
        proc = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        worker = WorkerProcess(proc, log_path, hostname)
        workers.append(worker)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"celery worker exited with {proc.returncode}:\n{worker.log()}")
            if " ready." in worker.log():
                return worker
            time.sleep(0.2)
        pytest.fail(f"celery worker not ready after {WORKER_READY_TIMEOUT_S}s:\n{worker.log()}")

    yield start
    for worker in workers:
        worker.stop()
