"""Runs on real worker processes: a 15-configuration sweep, a worker killed mid-run, cancel,
a Redis restart with runs queued, and the embedded broker."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import database_url  # noqa: E402

TEST_REDIS_DB = 14
# The smallest runs that still go through the whole data path: a handful of 32 px patches.
TINY = {
    "arch": "resnet18", "patch_size": 32, "target_mpp": 2.0, "patches_per_slide": 4,
    "pretrained": "none", "num_workers": 0, "epochs": 1, "normalisation_patches": 32,
}  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_celery_broker():  # type: ignore[no-untyped-def]
    from config.celery import app

    saved = app.conf.broker_url, app.conf.broker_transport_options
    yield
    app.conf.broker_url, app.conf.broker_transport_options = saved
    app._after_fork()


def redis_test_url(redis_url: str) -> str:
    return urlunsplit(urlsplit(redis_url)._replace(path=f"/{TEST_REDIS_DB}"))


@pytest.fixture
def redis_env(redis_url: str, worker_env: Callable[..., dict[str, str]]) -> dict[str, str]:
    import redis

    url = redis_test_url(redis_url)
    redis.Redis.from_url(url).flushdb()
    env = worker_env(CELERY_BROKER_URL=url, REDIS_URL=url, DATABASE_URL=database_url())
    _point_this_process_at(url)
    return env


def _point_this_process_at(broker: str) -> None:
    """Messages sent by this test process must reach the workers' broker."""
    from config.celery import app

    app.conf.broker_url = broker
    # Forget the connection pools of the previous broker (as Celery does after a fork).
    app._after_fork()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def statuses(sweep_id: int) -> list[str]:
    from training.models import TrainingRun

    return list(
        TrainingRun.objects.filter(sweep_id=sweep_id)
        .order_by("pk")
        .values_list("status", flat=True)
    )


def test_paper_sweep_of_fifteen_tiny_runs(tiny_cohort, redis_env, start_worker) -> None:  # type: ignore[no-untyped-def]
    from training.models import TrainingRun
    from training.services.runs import sweep_create

    sweep = sweep_create(cohort=tiny_cohort, grid="paper", shared=TINY, evaluate=False)
    assert TrainingRun.objects.filter(sweep=sweep).count() == 15
    worker = start_worker(queues="gpu", env=redis_env)
    wait_for(lambda: "queued" not in statuses(sweep.pk) and "running" not in statuses(sweep.pk),
             600, "15 runs to end")  # fmt: skip
    assert statuses(sweep.pk) == ["succeeded"] * 15, worker.log()[-3000:]
    pairs = sorted(TrainingRun.objects.filter(sweep=sweep).values_list("alpha", "beta"))
    assert len(pairs) == 15 and all(a + b <= 1.0 + 1e-9 for a, b in pairs)
    assert set(TrainingRun.objects.filter(sweep=sweep).values_list("worker", flat=True)) == {
        worker.hostname
    }


def test_killed_worker_run_resumes_from_checkpoint(tiny_cohort, redis_env, start_worker) -> None:  # type: ignore[no-untyped-def]
    from training.models import TrainingRun
    from training.services.runs import sweep_create

    env = {**redis_env, "TUMORMAP_HEARTBEAT_TIMEOUT_S": "3"}
    settings = {**TINY, "epochs": 5, "patches_per_slide": 24}
    sweep = sweep_create(cohort=tiny_cohort, grid="0.4:0.2", shared=settings, evaluate=False)
    run = TrainingRun.objects.get(sweep=sweep)
    first = start_worker(queues="gpu", env=env)
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).epochs_completed >= 1, 300, "epoch 1")
    first.proc.kill()  # SIGKILL: no chance to clean up
    first.proc.wait(timeout=10)
    killed_at = TrainingRun.objects.get(pk=run.pk)
    assert killed_at.status == "running" and killed_at.epochs_completed < 5
    time.sleep(4)  # let the heartbeat go stale
    second = start_worker(queues="gpu", env=env)
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).status not in ("queued", "running"), 300,
             "the resumed run to end")  # fmt: skip
    run.refresh_from_db()
    assert run.status == "succeeded", run.error + second.log()[-3000:]
    assert run.epochs_completed == 5
    assert [h["epoch"] for h in run.history] == [1, 2, 3, 4, 5]
    assert run.attempts == 2 and run.worker == second.hostname
    assert "resuming from checkpoint" in run.log_tail
    assert f"(epoch {killed_at.epochs_completed})" in run.log_tail


def test_cancel_running_and_queued_runs(tiny_cohort, redis_env, start_worker) -> None:  # type: ignore[no-untyped-def]
    from training.models import TrainingRun
    from training.services.runs import run_request_cancel, sweep_create

    settings = {**TINY, "epochs": 50, "patches_per_slide": 16}
    sweep = sweep_create(cohort=tiny_cohort, grid="0.2:0,0.4:0", shared=settings, evaluate=False)
    running, queued = TrainingRun.objects.filter(sweep=sweep).order_by("pk")
    worker = start_worker(queues="gpu", env=redis_env)
    wait_for(lambda: TrainingRun.objects.get(pk=running.pk).progress.get("step"), 300, "a step")
    assert TrainingRun.objects.get(pk=queued.pk).status == "queued"  # one run per GPU worker
    run_request_cancel(run=queued)
    assert TrainingRun.objects.get(pk=queued.pk).status == "cancelled"
    run_request_cancel(run=TrainingRun.objects.get(pk=running.pk))
    wait_for(lambda: TrainingRun.objects.get(pk=running.pk).status == "cancelled", 120,
             "the running run to stop")  # fmt: skip
    running.refresh_from_db()
    assert running.epochs_completed < 50
    time.sleep(2)  # the cancelled queued run's message is skipped, never started
    queued.refresh_from_db()
    assert queued.status == "cancelled" and queued.attempts == 0, worker.log()[-2000:]


def _restart_redis(redis_url: str) -> None:
    import redis

    parts = urlsplit(redis_url)
    port = str(parts.port or 6379)
    client = redis.Redis.from_url(redis_url)
    with contextlib.suppress(redis.ConnectionError):  # the server hangs up as it stops
        client.shutdown(nosave=True)
    Path("/var/lib/redis").mkdir(parents=True, exist_ok=True)
    Path("/var/log/redis").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", port,
         "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
         "--logfile", "/var/log/redis/ci.log"],
        check=True,
    )  # fmt: skip
    wait_for(lambda: _pings(redis_url), 30, "Redis to come back")


def _pings(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(
    os.environ.get("CI", "").lower() != "true"
    and not os.environ.get("TUMORMAP_TEST_RESTART_REDIS"),
    reason="restarts the Redis server: runs under CI=true, or with TUMORMAP_TEST_RESTART_REDIS=1",
)
def test_redis_restart_with_runs_queued_loses_none(
    tiny_cohort, redis_env, redis_url, start_worker
) -> None:  # type: ignore[no-untyped-def]
    from training.services.runs import sweep_create

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: cannot restart Redis")
    sweep = sweep_create(cohort=tiny_cohort, grid="0.2:0,0.6:0.2", shared=TINY, evaluate=False)
    _restart_redis(redis_url)  # Redis keeps nothing on disk: the two queued messages are gone
    _point_this_process_at(redis_test_url(redis_url))
    start_worker(queues="gpu", env=redis_env)
    wait_for(lambda: statuses(sweep.pk) == ["succeeded", "succeeded"], 300, "both runs")


def test_embedded_broker_runs_a_small_sweep(
    tiny_cohort, worker_env, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings

    from training.services.runs import sweep_create

    env = worker_env(DATABASE_URL=database_url())
    for name in ("CELERY_BROKER_URL", "REDIS_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS or {
        "data_folder_in": str(Path(settings.VAR_DIR) / "broker" / "queue"),
        "data_folder_out": str(Path(settings.VAR_DIR) / "broker" / "queue"),
        "processed_folder": str(Path(settings.VAR_DIR) / "broker" / "processed"),
        "control_folder": str(Path(settings.VAR_DIR) / "broker" / "control"),
    }
    from config.celery import app

    for key in ("data_folder_in", "processed_folder", "control_folder"):
        Path(str(options[key])).mkdir(parents=True, exist_ok=True)
    app.conf.broker_transport_options = options
    _point_this_process_at("filesystem://localhost/")
    sweep = sweep_create(cohort=tiny_cohort, grid="0.2:0.2,1.0:0", shared=TINY, evaluate=False)
    start_worker(queues="gpu", env=env)
    wait_for(lambda: statuses(sweep.pk) == ["succeeded", "succeeded"], 300, "both runs")
