from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from common.errors import TumorMapError
from slides.models import Cohort
from training.mil.config import RunConfig
from training.models import RunStatus, TrainingRun
from training.services.engine import run_execute
from training.services.runs import run_create


class Command(BaseCommand):
    help = (
        "Train one (alpha, beta) configuration on a cohort's training split, here and now, with "
        "a progress bar on stderr. With --json, stdout holds one JSON object with run_id and "
        "the final metrics."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--cohort", required=True)
        parser.add_argument("--alpha", type=float, required=True)
        parser.add_argument("--beta", type=float, required=True)
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--patches-per-slide", type=int)
        parser.add_argument("--arch", choices=["resnet18", "resnet34", "resnet50"])
        parser.add_argument("--patch-size", type=int)
        parser.add_argument("--target-mpp", type=float, help="um/px of patches (0.5 = 20x)")
        parser.add_argument("--output-stride", type=int, choices=[16, 32])
        parser.add_argument("--instance", choices=["patch", "pixel"])
        parser.add_argument("--lr", type=float)
        parser.add_argument("--seed", type=int)
        parser.add_argument("--num-workers", type=int)
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        parser.add_argument("--pretrained", help="imagenet, none, or a weights file")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        cohort = Cohort.objects.filter(name=options["cohort"]).first()
        if cohort is None:
            raise CommandError(f"No cohort named {options['cohort']!r}.")
        fields = (
            "epochs", "patches_per_slide", "arch", "patch_size", "target_mpp", "output_stride",
            "instance", "lr", "seed", "num_workers", "pretrained",
        )  # fmt: skip
        overrides = {f: options[f] for f in fields if options.get(f) is not None}
        try:
            config = RunConfig(alpha=options["alpha"], beta=options["beta"], **overrides)
            run = run_create(cohort=cohort, config=config)
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(
            f"Run {run.pk}: alpha={config.alpha:g} beta={config.beta:g} on {cohort.name}"
        )
        bar = tqdm(total=1.0, file=sys.stderr, unit="run", bar_format="{l_bar}{bar}| {postfix}")

        def progress(current: TrainingRun) -> None:
            p = current.progress
            bar.n = p.get("fraction", 0.0)
            loss = p.get("loss")
            bar.set_postfix_str(
                f"epoch {p.get('epoch')}/{p.get('epochs')} step {p.get('step')}/{p.get('steps')} "
                f"loss {loss if loss is None else round(loss, 4)} "
                f"{p.get('patches_per_s')} patches/s eta {p.get('eta_s')}s"
            )

        try:
            run = run_execute(run=run, device=options["device"], on_progress=progress)
        finally:
            bar.close()
        result = {
            "run_id": run.pk,
            "status": run.status,
            "alpha": run.alpha,
            "beta": run.beta,
            "epochs_completed": run.epochs_completed,
            "metric_name": run.metric_name,
            "best_metric": run.best_metric,
            "best_epoch": run.best_epoch,
            "final": run.history[-1] if run.history else {},
            "checkpoint": run.best_checkpoint_path,
            "error": run.error,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(
                f"Run {run.pk} {run.status}: best {run.metric_name}={run.best_metric} at epoch "
                f"{run.best_epoch}; checkpoint {run.best_checkpoint_path}"
            )
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"Run {run.pk} {run.status}: {run.error}")
