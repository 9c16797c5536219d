"""Celery tasks of the training app: ids in, one service call, status on the row.

Training and inference run on the ``gpu`` queue (see config/celery.py), whose workers use the
solo pool: the task runs in the worker's main process, which may start DataLoader workers.
"""

from __future__ import annotations

from typing import Any

from celery import Task, chain, shared_task
from celery.signals import worker_ready

from config.celery import CPU_QUEUE, GPU_QUEUE
from config.celery import app as celery_app
from training.models import RunStatus, TrainingRun
from training.services.runs import run_claim, runs_requeue_stale


@shared_task(name="training.tasks.train_run", bind=True, acks_late=True, reject_on_worker_lost=True)
def train_run(self: Task, run_id: int) -> dict[str, object]:
    from training.services.engine import run_execute  # the engine loads torch: only on workers

    run = run_claim(run_id=run_id, worker=self.request.hostname or "worker")
    if run is None:
        return {"run": run_id, "status": "skipped"}
    run = run_execute(run=run)
    if run.status == RunStatus.SUCCEEDED and run.sweep_id and run.sweep and run.sweep.evaluate:
        chain(
            celery_app.signature("training.tasks.infer_run", args=[run_id, "val"], queue=GPU_QUEUE,
                                 immutable=True),
            celery_app.signature("training.tasks.infer_run", args=[run_id, "test"],
                                 queue=GPU_QUEUE, immutable=True),
            celery_app.signature("evaluation.tasks.evaluate_run", args=[run_id, "test"],
                                 queue=CPU_QUEUE, immutable=True),
        ).apply_async()  # fmt: skip
    return {"run": run_id, "status": run.status}


@shared_task(name="training.tasks.infer_run", acks_late=True, reject_on_worker_lost=True)
def infer_run(run_id: int, split: str = "test") -> dict[str, object]:
    from training.services.engine import heatmap_infer, heatmap_slides

    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None:
        return {"run": run_id, "status": "missing"}
    heatmaps = heatmap_infer(run=run, slides=heatmap_slides(run, split=split, slide_ids=None))
    return {"run": run_id, "split": split, "maps": len(heatmaps)}


@shared_task(name="training.tasks.watchdog")
def watchdog() -> dict[str, object]:
    """Re-send runs whose worker died or whose message a restarted broker forgot."""
    return {"requeued": runs_requeue_stale()}


@worker_ready.connect
def _watchdog_on_start(sender: Any = None, **_: Any) -> None:
    # A worker that starts after a crash picks up what the crash left behind at once.
    runs_requeue_stale()
