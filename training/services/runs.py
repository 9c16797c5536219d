"""Creating, queueing, cancelling and retrying training runs and sweeps (ORM and broker only).

Delivery is at least once: a run's message may arrive twice (a redelivery after a worker died,
a watchdog re-send after the broker lost its queue). ``run_claim`` makes that harmless: only one
worker at a time may hold a run, and a finished or cancelled run is never started again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from common.errors import ConflictError, InvalidInputError
from config.celery import GPU_QUEUE
from config.celery import app as celery_app
from slides.models import Cohort, Label, Slide, SlideState
from training.mil.config import RunConfig, paper_grid
from training.models import ACTIVE_STATUSES, RunStatus, Sweep, TrainingRun

logger = logging.getLogger(__name__)

TRAIN_TASK = "training.tasks.train_run"
# Lines of log kept on the run's row for the web page; the full log is the worker's.
LOG_TAIL_LINES = 200


def _heartbeat_timeout() -> timedelta:
    # A run reports at least every step and every epoch; validation of a large split can take a
    # few minutes without steps, so the default is generous.
    return timedelta(seconds=getattr(settings, "TUMORMAP_HEARTBEAT_TIMEOUT_S", 600))


def run_log(run: TrainingRun, line: str) -> None:
    """Append a timestamped line to the run's log tail (saved at once)."""
    stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
    lines = [*run.log_tail.splitlines(), f"{stamp} {line}"][-LOG_TAIL_LINES:]
    run.log_tail = "\n".join(lines)
    TrainingRun.objects.filter(pk=run.pk).update(log_tail=run.log_tail)


def check_trainable(cohort: Cohort) -> None:
    labels = set(
        Slide.objects.filter(
            cohort=cohort, split="train", state=SlideState.READY,
            label__in=[Label.TUMOR, Label.NORMAL],
        ).values_list("label", flat=True)
    )  # fmt: skip
    if labels != {Label.TUMOR, Label.NORMAL}:
        raise InvalidInputError(
            f"Cohort {cohort.name!r} needs at least one ready tumor slide and one ready normal "
            "slide in its training split to train.",
            details={"train_labels": sorted(labels)},
        )


def broker_epoch() -> str:
    """An id of the broker's current life: Redis's run_id changes when the server restarts
    (and, without persistence, forgets its queues). Empty for other brokers."""
    url = str(celery_app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://")):
        return ""
    import redis

    try:
        info = redis.Redis.from_url(url, socket_connect_timeout=3).info("server")
    except redis.RedisError:
        return ""
    return str(info.get("run_id", ""))


def run_enqueue(*, run: TrainingRun) -> TrainingRun:
    """Queue the run on the gpu queue once the current transaction commits (ids only)."""
    run.status = RunStatus.QUEUED
    run.enqueued_at = timezone.now()
    run.queue = GPU_QUEUE
    run.save(update_fields=["status", "enqueued_at", "queue"])
    run_id = run.pk

    def send() -> None:
        result = celery_app.send_task(TRAIN_TASK, args=[run_id], queue=GPU_QUEUE)
        TrainingRun.objects.filter(pk=run_id).update(task_id=result.id, broker_epoch=broker_epoch())

    transaction.on_commit(send)
    return run


@transaction.atomic
def run_create(
    *,
    cohort: Cohort,
    config: RunConfig,
    created_by: User | None = None,
    sweep: Sweep | None = None,
    enqueue: bool = False,
) -> TrainingRun:
    """Record a run of ``config`` on the cohort's training split; queue it if asked."""
    check_trainable(cohort)
    run = TrainingRun.objects.create(
        cohort=cohort,
        sweep=sweep,
        config=config.to_dict(),
        alpha=config.alpha,
        beta=config.beta,
        status=RunStatus.QUEUED,
        created_by=created_by,
    )
    if enqueue:
        run_enqueue(run=run)
    return run


def parse_grid(grid: str | Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """ "paper" (the 15 configurations), "A:B,A:B,..." or pairs; each validated by RunConfig."""
    if isinstance(grid, str):
        if grid.strip().lower() == "paper":
            return paper_grid()
        pairs = []
        for part in grid.split(","):
            try:
                alpha, beta = (float(x) for x in part.split(":"))
            except ValueError:
                raise InvalidInputError(
                    f"A grid is 'paper' or pairs like 0.2:0,0.4:0.2, not {part!r}."
                ) from None
            pairs.append((alpha, beta))
        grid = pairs
    pairs = [(float(a), float(b)) for a, b in grid]
    if not pairs:
        raise InvalidInputError("A sweep needs at least one (alpha, beta) configuration.")
    if len({(round(a, 6), round(b, 6)) for a, b in pairs}) != len(pairs):
        raise InvalidInputError("The grid repeats a configuration.")
    return pairs


@transaction.atomic
def sweep_create(
    *,
    cohort: Cohort,
    grid: str | Iterable[tuple[float, float]] = "paper",
    shared: Mapping[str, Any] | None = None,
    created_by: User | None = None,
    evaluate: bool = True,
    name: str = "",
) -> Sweep:
    """Create one run per (alpha, beta) of the grid with the shared settings, and queue them.

    Every configuration is validated before anything is written: a bad one refuses the whole
    sweep. Runs are queued after the transaction commits.
    """
    pairs = parse_grid(grid)
    shared = dict(shared or {})
    for key in ("alpha", "beta"):
        shared.pop(key, None)
    configs = [RunConfig.from_dict({**shared, "alpha": a, "beta": b}) for a, b in pairs]
    check_trainable(cohort)
    sweep = Sweep.objects.create(
        cohort=cohort, name=name, grid=[list(p) for p in pairs], shared_settings=shared,
        created_by=created_by, evaluate=evaluate,
    )  # fmt: skip
    for config in configs:
        run_create(cohort=cohort, config=config, created_by=created_by, sweep=sweep, enqueue=True)
    return sweep


@transaction.atomic
def run_claim(*, run_id: int, worker: str) -> TrainingRun | None:
    """Take a run for this worker, or None when it must not run here (finished, cancelled, or
    held by another worker whose heartbeat is fresh)."""
    run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None or run.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED):
        return None
    now = timezone.now()
    if (
        run.status == RunStatus.RUNNING
        and run.heartbeat_at is not None
        and now - run.heartbeat_at < _heartbeat_timeout()
    ):
        return None
    if run.cancel_requested:
        run.status = RunStatus.CANCELLED
        run.finished_at = now
        run.save(update_fields=["status", "finished_at"])
        return None
    run.status = RunStatus.RUNNING
    run.worker = worker
    run.heartbeat_at = now
    run.attempts += 1
    run.save(update_fields=["status", "worker", "heartbeat_at", "attempts"])
    run_log(run, f"attempt {run.attempts} on {worker}")
    return run


def run_request_cancel(*, run: TrainingRun) -> TrainingRun:
    """Cancel a run: a queued one at once (its message is revoked and would be skipped anyway),
    a running one cooperatively at its next step."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in ACTIVE_STATUSES:
            raise ConflictError(f"Run {run.pk} is {run.status}: there is nothing to cancel.")
        run.cancel_requested = True
        if run.status == RunStatus.QUEUED:
            run.status = RunStatus.CANCELLED
            run.finished_at = timezone.now()
            run.error = "Cancelled before it started."
        run.save(update_fields=["cancel_requested", "status", "finished_at", "error"])
    if run.status == RunStatus.CANCELLED and run.task_id:
        celery_app.control.revoke(run.task_id)
    run_log(run, "cancel requested")
    return run


@transaction.atomic
def run_retry(*, run: TrainingRun) -> TrainingRun:
    """Queue a failed or cancelled run again; it resumes from its last checkpoint."""
    run = TrainingRun.objects.select_for_update().get(pk=run.pk)
    if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise ConflictError(f"Run {run.pk} is {run.status}: only failed or cancelled runs retry.")
    run.cancel_requested = False
    run.error = ""
    run.finished_at = None
    run.save(update_fields=["cancel_requested", "error", "finished_at"])
    run_log(run, "retry requested")
    return run_enqueue(run=run)


def runs_requeue_stale() -> list[int]:
    """Re-send the runs the queue lost: running ones whose worker stopped beating (it died)
    and queued ones sent before the broker last restarted. Returns the run ids re-sent."""
    now = timezone.now()
    epoch = broker_epoch()
    resent: list[int] = []
    with transaction.atomic():
        stale = TrainingRun.objects.select_for_update().filter(
            status=RunStatus.RUNNING, heartbeat_at__lt=now - _heartbeat_timeout()
        )
        for run in stale:
            run_log(run, f"worker {run.worker or '?'} stopped reporting; requeued")
            run_enqueue(run=run)
            resent.append(run.pk)
        if epoch:
            lost = (
                TrainingRun.objects.select_for_update()
                .filter(status=RunStatus.QUEUED, cancel_requested=False)
                .exclude(broker_epoch=epoch)
                .exclude(pk__in=resent)
            )
            for run in lost:
                run_log(run, "the broker restarted since this run was queued; queued again")
                run_enqueue(run=run)
                resent.append(run.pk)
    if resent:
        logger.warning("requeued runs %s", resent)
    return resent
