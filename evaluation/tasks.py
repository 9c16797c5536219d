"""Celery tasks of the evaluation app (cpu queue)."""

from __future__ import annotations

from celery import shared_task

from evaluation.services import evaluation_compute
from training.models import TrainingRun


@shared_task(name="evaluation.tasks.evaluate_run")
def evaluate_run(run_id: int, split: str = "test") -> dict[str, object]:
    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None:
        return {"run": run_id, "status": "missing"}
    evaluation = evaluation_compute(run=run, split=split)
    return {"run": run_id, "split": split, "auc_tissue": evaluation.auc_tissue}
