from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from common.errors import TumorMapError
from slides.wsi.synthetic import DEFAULT_HEIGHT, DEFAULT_WIDTH, write_demo_cohort


class Command(BaseCommand):
    help = (
        "Generate a synthetic cohort of H&E-like slides (pyramidal Aperio TIFF), labels.csv and "
        "one GeoJSON file of tumor contours per slide, in OUTDIR. Register it with import_cohort."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("outdir", type=Path)
        parser.add_argument("--slides", type=int, default=16, help="number of slides")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="level-0 width")
        parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT, help="level-0 height")
        parser.add_argument("--asap-xml", action="store_true", help="also write ASAP XML")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            slides = write_demo_cohort(
                options["outdir"],
                n_slides=options["slides"],
                seed=options["seed"],
                width=options["width"],
                height=options["height"],
                write_asap_xml=options["asap_xml"],
            )
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        summary = {
            "outdir": str(options["outdir"]),
            "slides": [
                {"file": s.path.name, "label": s.label, "case_id": s.case_id,
                 "location": s.location, "tumor_fraction": round(s.tumor_fraction, 4)}
                for s in slides
            ],
        }  # fmt: skip
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            tumor = sum(s.label == "tumor" for s in slides)
            self.stdout.write(
                f"Wrote {len(slides)} slides ({tumor} tumor, {len(slides) - tumor} normal), "
                f"labels.csv and contours to {options['outdir']}"
            )
