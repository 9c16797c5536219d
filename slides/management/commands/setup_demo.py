from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from slides.management.commands._progress import stderr_progress
from slides.models import Cohort, Slide, SlideState
from slides.services import cohort_get_or_create, cohort_import, slide_compute_tissue
from slides.services.annotations import annotations_import_files
from slides.wsi.label_files import parse_label_csv
from slides.wsi.synthetic import write_demo_cohort

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-tumormap"
DEMO_COHORT = "Demo cohort"
# Enough slides for a train / val / test split with both labels in each, small enough to build
# in well under a minute on a laptop.
DEMO_SLIDES = 16


class Command(BaseCommand):
    help = "Create the demo account and the synthetic demo cohort (once; safe to run again)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--slides", type=int, default=DEMO_SLIDES)

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model().objects
        user = users.filter(username=DEMO_USER).first()
        if user is None:
            user = users.create_superuser(DEMO_USER, password=DEMO_PASSWORD)
            self.stdout.write(f"Created the demo administrator {DEMO_USER} / {DEMO_PASSWORD}.")
        if Cohort.objects.filter(name=DEMO_COHORT).exists():
            self.stdout.write(f"{DEMO_COHORT!r} exists already.")
            return
        folder = Path(settings.VAR_DIR) / "demo" / "slides"
        self.stdout.write(f"Generating {options['slides']} synthetic slides in {folder} ...")
        write_demo_cohort(folder, n_slides=options["slides"], seed=0)
        cohort, _ = cohort_get_or_create(name=DEMO_COHORT, owner=user)
        progress, close = stderr_progress()
        try:
            report = cohort_import(
                cohort=cohort,
                path=folder,
                labels=parse_label_csv((folder / "labels.csv").read_bytes()),
                progress=progress,
            )
            contours = sorted(folder.glob("*.geojson"))
            annotations_import_files(cohort=cohort, files=contours, author="synthetic truth")
            ready = list(Slide.objects.filter(cohort=cohort, state=SlideState.READY))
            for done, slide in enumerate(ready, start=1):
                slide_compute_tissue(slide=slide)
                progress("tissue masks", done, len(ready))
        finally:
            close()
        self.stdout.write(
            f"Imported {DEMO_COHORT!r}: {report.slides} slides, labels {report.labels}, "
            f"splits {report.splits}."
        )
