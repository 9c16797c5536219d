from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from common.errors import TumorMapError
from slides.management.commands._progress import stderr_progress
from slides.services import cohort_get_or_create, cohort_import
from slides.wsi.label_files import parse_gdc_manifest, parse_label_csv, parse_sample_sheet
from slides.wsi.splits import parse_ratios


def default_owner(username: str | None) -> Any:
    users = get_user_model().objects
    if username:
        user = users.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        return user
    user = users.filter(is_superuser=True).order_by("pk").first()
    if user is None:
        raise CommandError(
            "A new cohort needs an owner: pass --owner USERNAME, or create an administrator "
            "first (python manage.py createsuperuser)."
        )
    return user


class Command(BaseCommand):
    help = (
        "Register a cohort: slide files under PATH (detected by content) and/or the rows of a "
        "GDC manifest, labelled from a label CSV, a GDC sample sheet or TCGA barcodes, and split "
        "by case. Idempotent. With --json, stdout holds one JSON object; progress goes to stderr."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("path", nargs="?", type=Path, help="folder (or file) of slides")
        parser.add_argument("--name", required=True, help="cohort name (created if new)")
        parser.add_argument("--manifest", type=Path, help="GDC download manifest")
        parser.add_argument("--sample-sheet", type=Path, help="GDC sample sheet")
        parser.add_argument(
            "--labels", type=Path, help="CSV: filename,label[,case_id,location,split]"
        )
        parser.add_argument("--location", help="organ of slides that do not say otherwise")
        parser.add_argument("--owner", help="owner of a new cohort (default: first admin)")
        parser.add_argument("--ratios", default="0.65,0.15,0.20", help="train,val,test")
        parser.add_argument("--seed", type=int, default=0, help="seed of the case split")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path | None = options["path"]
        if path is None and options["manifest"] is None:
            raise CommandError("Give a PATH of slides, a --manifest, or both.")
        if path is not None and not path.exists():
            raise CommandError(f"{path} does not exist.")
        try:
            manifest = parse_gdc_manifest(_read(options["manifest"])) if options["manifest"] else []
            sheet = (
                parse_sample_sheet(_read(options["sample_sheet"]))
                if options["sample_sheet"]
                else []
            )
            labels = parse_label_csv(_read(options["labels"])) if options["labels"] else []
            ratios = parse_ratios(options["ratios"])
            cohort, _ = cohort_get_or_create(
                name=options["name"],
                owner=default_owner(options["owner"]),
                default_location=options["location"] or "",
            )
            progress, close = stderr_progress()
            try:
                report = cohort_import(
                    cohort=cohort,
                    path=path,
                    manifest=manifest,
                    sample_sheet=sheet,
                    labels=labels,
                    location=options["location"],
                    ratios=ratios,
                    seed=options["seed"],
                    progress=progress,
                )
            finally:
                close()
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        for warning in report.warnings:
            self.stderr.write(f"warning: {warning['file']}: {warning['message']}")
        for error in report.errors:
            self.stderr.write(f"error: {error['file']}: {error['message']}")
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
            return
        self.stdout.write(
            f"Cohort {report.cohort}: {report.slides} slides, {report.cases} cases; "
            f"labels {report.labels}; splits {report.splits}; states {report.states}; "
            f"{len(report.errors)} error(s)."
        )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"Cannot read {path}: {exc.strerror or exc}") from exc
