from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from common.errors import TumorMapError
from evaluation.services import evaluation_as_dict, evaluation_compute
from training.models import TrainingRun


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


class Command(BaseCommand):
    help = (
        "Score a run's tumor maps of a split against the contours: pixelwise AUC on tissue and "
        "with background, per location, precision / recall / F1 / Dice at the validation "
        "threshold. With --json, stdout holds exactly one JSON object."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--run", type=int, required=True)
        parser.add_argument("--split", default="test", choices=["train", "val", "test"])
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        run = TrainingRun.objects.filter(pk=options["run"]).first()
        if run is None:
            raise CommandError(f"No run {options['run']}.")
        try:
            evaluation = evaluation_compute(run=run, split=options["split"])
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        result = evaluation_as_dict(evaluation)
        for name in result["missing_contours"]:
            self.stderr.write(f"warning: tumor slide {name} has no contour and was not scored")
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        self.stdout.write(
            f"Run {run.pk} on {evaluation.split}: {evaluation.n_slides} slides, "
            f"{evaluation.n_pixels} map cells\n"
            f"  AUC tissue {_fmt(evaluation.auc_tissue)}   with background "
            f"{_fmt(evaluation.auc_all)}\n"
            f"  threshold {evaluation.threshold} ({evaluation.threshold_source}): precision "
            f"{_fmt(evaluation.precision)} recall {_fmt(evaluation.recall)} F1 "
            f"{_fmt(evaluation.f1)} Dice {_fmt(evaluation.dice)}"
        )
        for location, scores in result["per_location"].items():
            self.stdout.write(
                f"  {location}: AUC tissue {_fmt(scores['auc_tissue'])}, with background "
                f"{_fmt(scores['auc_all'])} ({scores['n_slides']} slides)"
            )
