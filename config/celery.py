"""The Celery application: two queues, ``cpu`` and ``gpu``, routed by task name.

GPU work (training, whole-slide inference) goes to ``gpu``, served by one worker process per
GPU with concurrency 1; everything else (thumbnails, tissue masks, evaluation) to ``cpu``.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery, Task
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tumormap")
app.config_from_object("django.conf:settings", namespace="CELERY")

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
GPU_TASKS = ("training.tasks.train_run", "training.tasks.infer_run", "tumormap.ping_gpu")

# Each queue has its own direct exchange and routing key, so a message routed to one queue can
# never be consumed from the other, whatever the transport.
app.conf.task_queues = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (CPU_QUEUE, GPU_QUEUE)
)
app.conf.update(task_default_exchange=CPU_QUEUE, task_default_routing_key=CPU_QUEUE)
app.conf.task_routes = {pattern: {"queue": GPU_QUEUE} for pattern in GPU_TASKS}
app.autodiscover_tasks()


@app.on_after_configure.connect
def _create_embedded_broker_folders(sender: Celery, **_: object) -> None:
    """The filesystem transport does not create its folders; do it before the first message."""
    from django.conf import settings

    if settings.CELERY_EMBEDDED_BROKER:
        for key in ("data_folder_in", "processed_folder", "control_folder"):
            Path(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key])).mkdir(
                parents=True, exist_ok=True
            )
        results = settings.CELERY_RESULT_BACKEND
        if results.startswith("file://"):
            Path(results.removeprefix("file://")).mkdir(parents=True, exist_ok=True)


def _whoami(task: Task) -> dict[str, object]:
    delivery = task.request.delivery_info or {}
    return {
        "pong": True,
        "queue": delivery.get("routing_key"),
        "hostname": task.request.hostname,
        "pid": os.getpid(),
    }


@app.task(name="tumormap.ping", bind=True)
def ping(self: Task) -> dict[str, object]:
    """A trivial task on the cpu queue: proves that a worker consumes it."""
    return _whoami(self)


@app.task(name="tumormap.ping_gpu", bind=True)
def ping_gpu(self: Task) -> dict[str, object]:
    """A trivial task routed to the gpu queue: proves that a GPU worker consumes it."""
    return _whoami(self)
