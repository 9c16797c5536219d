from __future__ import annotations

import json
from argparse import ArgumentParser
from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from common.errors import TumorMapError
from slides.models import Cohort
from slides.services.annotations import annotations_import_files


class Command(BaseCommand):
    help = (
        "Import pathologists' contours (GeoJSON as exported by QuPath, ASAP XML, Aperio "
        "ImageScope XML, CAMELYON16 JSON). A file named after its slide (<slide file "
        "name>.geojson, <slide stem>.xml) is matched to it, or --slide names the slide. All or "
        "nothing: one bad file imports none."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("files", nargs="+", type=Path)
        parser.add_argument("--cohort", required=True)
        parser.add_argument("--slide", help="file name of the slide every file belongs to")
        parser.add_argument("--author", default="", help="recorded when the file names none")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        cohort = Cohort.objects.filter(name=options["cohort"]).first()
        if cohort is None:
            raise CommandError(f"No cohort named {options['cohort']!r}.")
        try:
            results = annotations_import_files(
                cohort=cohort, files=options["files"], slide_name=options["slide"],
                author=options["author"],
            )  # fmt: skip
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        for result in results:
            for warning in result.warnings:
                self.stderr.write(f"warning: {result.file}: {warning}")
        if options["json"]:
            self.stdout.write(json.dumps({"imported": [asdict(r) for r in results]}))
            return
        for r in results:
            self.stdout.write(
                f"{r.file} -> {r.slide}: {r.contours} contours, {r.vertices} vertices"
            )
