from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from common.errors import TumorMapError
from evaluation.reports import report_write
from training.models import TrainingRun


class Command(BaseCommand):
    help = (
        "Write the alpha x beta report of a set of runs (the paper's Table 1): report.csv, "
        "report.json, grid.png and curves.png in --out."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--runs", type=int, nargs="*", help="run ids (default: --cohort's)")
        parser.add_argument("--cohort", help="every run of this cohort")
        parser.add_argument("--split", default="test", choices=["val", "test"])
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        runs = TrainingRun.objects.all().order_by("pk")
        if options["runs"]:
            runs = runs.filter(pk__in=options["runs"])
        elif options["cohort"]:
            runs = runs.filter(cohort__name=options["cohort"])
        else:
            raise CommandError("Name the runs (--runs ID ...) or a --cohort.")
        try:
            files = report_write(runs=list(runs), split=options["split"], outdir=options["out"])
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        paths = {k: str(v) if v else None for k, v in vars(files).items()}
        if options["json"]:
            self.stdout.write(json.dumps(paths))
        else:
            for name, path in paths.items():
                self.stdout.write(f"{name}: {path}")
