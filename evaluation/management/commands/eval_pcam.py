from __future__ import annotations

import json
import math
import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from common.errors import TumorMapError
from evaluation.services import pcam_evaluate
from training.models import TrainingRun


class Command(BaseCommand):
    help = (
        "Patch-level AUC of a run's model on PatchCamelyon (the official h5 files: x N x 96 x 96 "
        "x 3, y N labels), patches upsampled x2 and zero-padded to 224, scored on the central "
        "region. Streams in batches. With --json, stdout holds one JSON object."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--run", type=int, required=True)
        parser.add_argument("--x", type=Path, required=True, help="..._x.h5")
        parser.add_argument("--y", type=Path, required=True, help="..._y.h5")
        parser.add_argument("--batch-size", type=int, default=256)
        parser.add_argument("--device", default="auto")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        run = TrainingRun.objects.filter(pk=options["run"]).first()
        if run is None:
            raise CommandError(f"No run {options['run']}.")
        bar = tqdm(total=0, file=sys.stderr, unit="patch", desc="PatchCamelyon")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            evaluation = pcam_evaluate(
                run=run, x_path=options["x"], y_path=options["y"], device=options["device"],
                batch_size=options["batch_size"], on_progress=progress,
            )  # fmt: skip
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        finally:
            bar.close()
        result = dict(evaluation.details["pcam"])
        auc = result.get("auc")
        result["auc"] = auc if isinstance(auc, float) and math.isfinite(auc) else None
        result["run"] = run.pk
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(
                f"Run {run.pk} on PatchCamelyon: AUC {result['auc']} over {result.get('n')} "
                f"patches ({result.get('n_pos')} tumor)"
            )
