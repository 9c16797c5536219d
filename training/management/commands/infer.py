from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from common.errors import TumorMapError
from slides.models import Slide
from training.models import TrainingRun
from training.services.engine import heatmap_infer, heatmap_slides


class Command(BaseCommand):
    help = (
        "Infer a trained run over whole slides: one tumor probability map per slide at the "
        "model's output stride, stored with its geometry and exported as a pyramidal TIFF."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--run", type=int, required=True)
        parser.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
        parser.add_argument("--slides", type=int, nargs="+", help="slide ids (instead of --split)")
        parser.add_argument("--device", default="auto")
        parser.add_argument(
            "--reader-processes",
            type=int,
            default=None,
            help="read patches in N worker processes (0: threads; default: "
            "TUMORMAP_INFER_READER_PROCESSES)",
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        run = TrainingRun.objects.filter(pk=options["run"]).first()
        if run is None:
            raise CommandError(f"No run {options['run']}.")
        bar = tqdm(total=0, file=sys.stderr, unit="patch")

        def progress(done: int, total: int, slide: Slide) -> None:
            bar.total = total
            bar.n = done
            bar.set_description(slide.original_filename)
            bar.refresh()

        try:
            slides = heatmap_slides(run, split=options["split"], slide_ids=options["slides"])
            heatmaps = heatmap_infer(
                run=run,
                slides=slides,
                device=options["device"],
                reader_processes=options["reader_processes"],
                on_progress=progress,
            )
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        finally:
            bar.close()
        skipped = sorted(
            {s.original_filename for s in slides} - {h.slide.original_filename for h in heatmaps}
        )
        for name in skipped:
            self.stderr.write(f"warning: {name} could not be mapped (unreadable or no tissue)")
        result = {
            "run": run.pk,
            "maps": [
                {
                    "slide_id": h.slide_id,
                    "slide": h.slide.original_filename,
                    "rows": h.rows,
                    "cols": h.cols,
                    "l0_cell_size": h.l0_cell_size,
                    "map": h.map_path,
                    "tiff": h.tiff_path,
                }
                for h in heatmaps
            ],
            "skipped": skipped,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(f"Run {run.pk}: {len(heatmaps)} maps, {len(skipped)} skipped.")
