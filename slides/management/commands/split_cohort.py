from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from common.errors import TumorMapError
from slides.models import Cohort
from slides.services import cohort_split
from slides.services.splits import split_counts
from slides.wsi.splits import parse_ratios


class Command(BaseCommand):
    help = (
        "Split a cohort into train / val / test by CASE, stratified by location and label, "
        "identical for a seed on every machine. Splits given by a label file are kept; cases "
        "with trained runs are not moved unless --force."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="cohort name")
        parser.add_argument("--ratios", default="0.65,0.15,0.20", help="train,val,test")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--force", action="store_true", help="move cases with trained runs")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        cohort = Cohort.objects.filter(name=options["name"]).first()
        if cohort is None:
            raise CommandError(f"No cohort named {options['name']!r}.")
        try:
            assignment = cohort_split(
                cohort=cohort,
                ratios=parse_ratios(options["ratios"]),
                seed=options["seed"],
                force=options["force"],
            )
        except TumorMapError as exc:
            raise CommandError(exc.message) from exc
        units = {name: 0 for name in ("train", "val", "test")}
        for split in assignment.values():
            units[split] = units.get(split, 0) + 1
        result = {"cohort": cohort.name, "cases": units, "slides": split_counts(cohort)}
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(f"Cohort {cohort.name}: cases {units}; slides {result['slides']}")
