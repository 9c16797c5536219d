from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from training.management.commands.sweep import run_summary
from training.models import TrainingRun


class Command(BaseCommand):
    help = "List training runs with their status and progress."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--sweep", type=int)
        parser.add_argument("--cohort")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        runs = TrainingRun.objects.order_by("pk")
        if options["sweep"]:
            runs = runs.filter(sweep_id=options["sweep"])
        if options["cohort"]:
            runs = runs.filter(cohort__name=options["cohort"])
        rows = [run_summary(r) for r in runs]
        if options["json"]:
            self.stdout.write(json.dumps({"runs": rows}))
            return
        self.stdout.write(f"{'id':>5} {'alpha':>5} {'beta':>5} {'status':<10} progress")
        for r in rows:
            p = r["progress"] or {}
            progress = (
                f"epoch {p.get('epoch')}/{p.get('epochs')} step {p.get('step')}/{p.get('steps')}"
                f" loss {p.get('loss')} {p.get('patches_per_s')} patches/s eta {p.get('eta_s')}s"
                if p
                else ""
            )
            self.stdout.write(
                f"{r['id']:>5} {r['alpha']:>5g} {r['beta']:>5g} {r['status']:<10} {progress}"
            )
