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
# A short sweep that a laptop CPU trains, maps and scores in a few minutes: small patches at
# 2 um/px, a small network from scratch (no ImageNet weights offline), beta = 0.
DEMO_GRID = [(0.2, 0.0), (0.4, 0.0)]
DEMO_RUN_SETTINGS = {
    "arch": "resnet18", "pretrained": "none", "patch_size": 64, "target_mpp": 2.0,
    "patches_per_slide": 32, "epochs": 8, "num_workers": 0, "normalisation_patches": 256,
}  # fmt: skip


class Command(BaseCommand):
    help = "Create the demo account and the synthetic demo cohort (once; safe to run again)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--slides", type=int, default=DEMO_SLIDES)
        parser.add_argument("--no-sweep", action="store_true", help="do not queue training runs")

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
        if not options["no_sweep"]:
            # Imported here: slides never depends on training, only this demo set-up does.
            from training.services.runs import sweep_create

            sweep = sweep_create(
                cohort=cohort, grid=DEMO_GRID, shared=DEMO_RUN_SETTINGS, created_by=user,
                evaluate=True, name="Demo sweep",
            )  # fmt: skip
            self.stdout.write(
                f"Queued {sweep.runs.count()} short CPU training runs (maps and a report follow)."
            )
