from __future__ import annotations

import json
import sys
import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from common.errors import TumorMapError
from slides.models import Cohort
from training.models import ACTIVE_STATUSES, Sweep, TrainingRun
from training.services.runs import sweep_create

# How often --wait looks at the runs: progress is written at most once a second anyway.
POLL_S = 2.0


def run_summary(run: TrainingRun) -> dict[str, Any]:
    return {
        "id": run.pk,
        "alpha": run.alpha,
        "beta": run.beta,
        "status": run.status,
        "epochs_completed": run.epochs_completed,
        "progress": run.progress,
        "best_metric": run.best_metric,
        "worker": run.worker,
        "error": run.error,
    }


class Command(BaseCommand):
    help = (
        "Queue a sweep of (alpha, beta) configurations on the gpu queue. With --wait, block "
        "until every run ends, showing progress on stderr. With --json, stdout holds one JSON "
        'object {"sweep_id", "runs": [...]}.'
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--cohort", required=True)
        parser.add_argument("--grid", default="paper", help="'paper' or A:B,A:B,...")
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--patches-per-slide", type=int)
        parser.add_argument("--arch", choices=["resnet18", "resnet34", "resnet50"])
        parser.add_argument("--patch-size", type=int)
        parser.add_argument("--target-mpp", type=float)
        parser.add_argument("--pretrained", help="imagenet, none, or a weights file")
        parser.add_argument("--num-workers", type=int)
        parser.add_argument("--no-evaluate", action="store_true", help="skip maps and scores")
        parser.add_argument("--wait", action="store_true")
        parser.add_argument("--timeout", type=float, default=0, help="--wait at most this (s)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        cohort = Cohort.objects.filter(name=options["cohort"]).first()
        if cohort is None:
            raise CommandError(f"No cohort named {options['cohort']!r}.")
        fields = ("epochs", "patches_per_slide", "arch", "patch_size", "target_mpp",
                  "pretrained", "num_workers")  # fmt: skip
        shared = {f: options[f] for f in fields if options.get(f) is not None}
        try:
            sweep = sweep_create(
                cohort=cohort, grid=options["grid"], shared=shared,
                evaluate=not options["no_evaluate"],
            )  # fmt: skip
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"Sweep {sweep.pk}: {sweep.runs.count()} runs queued on {cohort}.")
        if options["wait"]:
            self._wait(sweep, options["timeout"])
        runs = [run_summary(r) for r in sweep.runs.order_by("pk")]
        if options["json"]:
            self.stdout.write(json.dumps({"sweep_id": sweep.pk, "runs": runs}))
        else:
            for r in runs:
                self.stdout.write(
                    f"run {r['id']}: alpha={r['alpha']:g} beta={r['beta']:g} {r['status']}"
                )

    def _wait(self, sweep: Sweep, timeout: float) -> None:
        started = time.monotonic()
        while True:
            runs = list(sweep.runs.order_by("pk"))
            counts: dict[str, int] = {}
            for run in runs:
                counts[run.status] = counts.get(run.status, 0) + 1
            fraction = sum(
                1.0 if run.status not in ACTIVE_STATUSES else run.progress.get("fraction", 0.0)
                for run in runs
            ) / max(1, len(runs))
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            sys.stderr.write(f"\rsweep {sweep.pk}: {fraction:6.1%}  {summary}   ")
            sys.stderr.flush()
            if not any(run.status in ACTIVE_STATUSES for run in runs):
                sys.stderr.write("\n")
                return
            if timeout and time.monotonic() - started > timeout:
                sys.stderr.write("\n")
                raise CommandError(f"Sweep {sweep.pk} still running after {timeout:g} s.")
            time.sleep(POLL_S)
