"""Registering a cohort: slide files found on disk, GDC manifest rows, labels, cases, splits.

An import never stops on a bad file: the slide is recorded ``unreadable`` with the reason and
the import goes on. Running the same import twice changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction

from common.errors import BarcodeError, TumorMapError
from slides.models import Case, Cohort, Label, LabelSource, Slide, SlideState, Split
from slides.services.splits import cohort_split, split_unit
from slides.wsi.label_files import LabelRow, ManifestRow, SampleSheetRow, sample_type_label
from slides.wsi.reader import SlideReader, detect_format
from slides.wsi.splits import PAPER_RATIOS
from slides.wsi.tcga import TcgaBarcode, parse_barcode

logger = logging.getLogger(__name__)

# File extensions of the slide formats OpenSlide reads. A file with one of these that OpenSlide
# does not recognise is recorded as unreadable; any other file is registered only when its
# content is a slide (so labels.csv or contour files beside the slides are not).
SLIDE_EXTENSIONS = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
     ".dcm", ".czi"}
)  # fmt: skip
# Bytes read at a time while hashing: large enough to keep the disk streaming.
HASH_CHUNK = 8 * 1024 * 1024

# TCGA projects of a sample sheet, mapped to the organ ("location") the paper reports on.
PROJECT_LOCATIONS = {
    "TCGA-BRCA": "breast", "TCGA-KIRC": "kidney", "TCGA-KIRP": "kidney", "TCGA-KICH": "kidney",
    "TCGA-LUAD": "lung", "TCGA-LUSC": "lung", "TCGA-COAD": "colon", "TCGA-READ": "rectum",
    "TCGA-OV": "ovary", "TCGA-UCEC": "corpus uteri", "TCGA-PRAD": "prostate",
    "TCGA-THCA": "thyroid", "TCGA-HNSC": "head and neck", "TCGA-LIHC": "liver",
    "TCGA-STAD": "stomach", "TCGA-BLCA": "bladder", "TCGA-SKCM": "skin", "TCGA-GBM": "brain",
    "TCGA-LGG": "brain", "TCGA-PAAD": "pancreas", "TCGA-ESCA": "esophagus",
    "TCGA-CESC": "cervix", "TCGA-SARC": "soft tissue", "TCGA-TGCT": "testis",
}  # fmt: skip

Progress = Callable[[str, int, int], None]


@dataclass
class ImportReport:
    cohort: str
    slides: int = 0
    cases: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    registered: int = 0
    inspected: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "cohort": self.cohort,
            "slides": self.slides,
            "cases": self.cases,
            "labels": self.labels,
            "splits": self.splits,
            "states": self.states,
            "registered": self.registered,
            "inspected": self.inspected,
            "errors": self.errors,
            "warnings": self.warnings,
        }


def discover_slide_files(root: Path) -> list[Path]:
    """Slide files under ``root`` (a file or a folder), sorted.

    A MIRAX ``.mrxs`` file is registered with its companion folder of the same stem, which is
    not searched for slides of its own.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    found: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        mrxs_stems = {Path(f).stem for f in filenames if f.lower().endswith(".mrxs")}
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in mrxs_stems)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            if path.suffix.lower() in SLIDE_EXTENSIONS or detect_format(path) is not None:
                found.append(path)
    return found


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _inspect(slide: Slide, path: Path, default_mpp: float | None) -> None:
    """Fill the slide's file facts and metadata from the file, or mark it unreadable."""
    slide.file_path = str(path.resolve())
    slide.error_message = ""
    slide.warnings = []
    try:
        slide.size = path.stat().st_size
        slide.md5 = file_md5(path)
    except OSError as exc:
        slide.state = SlideState.UNREADABLE
        slide.error_message = f"{path.name} cannot be read: {exc.strerror or exc}"
        return
    if slide.expected_md5 and slide.md5 != slide.expected_md5:
        slide.state = SlideState.UNREADABLE
        slide.error_message = (
            f"{path.name}: md5 {slide.md5} differs from the manifest's {slide.expected_md5} "
            "(incomplete or corrupt download)"
        )
        return
    try:
        with SlideReader(path, default_mpp=default_mpp) as reader:
            meta = reader.metadata
    except TumorMapError as exc:
        slide.state = SlideState.UNREADABLE
        slide.error_message = exc.message
        return
    slide.state = SlideState.READY
    slide.vendor = meta.vendor or ""
    slide.width, slide.height = meta.l0_width, meta.l0_height
    slide.level_count = meta.level_count
    slide.level_dimensions = [list(d) for d in meta.level_dimensions]
    slide.level_downsamples = list(meta.level_downsamples)
    slide.mpp = meta.mpp
    slide.mpp_assumed = meta.mpp_assumed
    slide.objective_power = meta.objective_power
    slide.associated_images = list(meta.associated_images)
    slide.warnings = list(meta.warnings)


def _apply_barcode(slide: Slide, barcode: TcgaBarcode) -> None:
    slide.sample_type_code = barcode.sample_type_code
    slide.sample_type_name = barcode.sample_type_name
    slide.slide_type = barcode.slide_type or ""
    if slide.label_source in (LabelSource.NONE, LabelSource.BARCODE):
        label = barcode.label if barcode.label in Label.values else Label.UNKNOWN
        slide.label = label
        slide.label_source = LabelSource.BARCODE if label != Label.UNKNOWN else LabelSource.NONE


class _Importer:
    def __init__(self, cohort: Cohort, location: str | None, progress: Progress | None) -> None:
        self.cohort = cohort
        self.location = (location or "").strip().lower()
        self.progress = progress or (lambda stage, done, total: None)
        self.report = ImportReport(cohort=cohort.name)
        self.slides: dict[str, Slide] = {
            s.original_filename: s
            for s in Slide.objects.filter(cohort=cohort).select_related("case")
        }
        self.cases: dict[str, Case] = {
            c.submitter_id: c for c in Case.objects.filter(cohort=cohort)
        }
        self.dirty: set[str] = set()

    def error(self, filename: str, code: str, message: str) -> None:
        self.report.errors.append({"file": filename, "code": code, "message": message})

    def slide(self, filename: str) -> Slide:
        slide = self.slides.get(filename)
        if slide is None:
            slide = Slide(cohort=self.cohort, original_filename=filename)
            self.slides[filename] = slide
            self.report.registered += 1
        self.dirty.add(filename)
        return slide

    def case(self, submitter_id: str) -> Case:
        case = self.cases.get(submitter_id)
        if case is None:
            case = Case.objects.create(cohort=self.cohort, submitter_id=submitter_id)
            self.cases[submitter_id] = case
        return case

    def add_manifest(self, rows: Iterable[ManifestRow]) -> None:
        for row in rows:
            slide = self.slide(row.filename)
            slide.gdc_file_id = row.file_id
            if slide.expected_md5 != row.md5 and slide.state == SlideState.READY:
                # The manifest announces another file than the one registered: check again.
                slide.state = SlideState.AWAITING_FILE
            slide.expected_md5 = row.md5
            if slide.size is None:
                slide.size = row.size

    def add_files(self, files: list[Path]) -> None:
        total = len(files)
        for done, path in enumerate(files, start=1):
            slide = self.slide(path.name)
            unchanged = (
                slide.pk is not None
                and slide.state != SlideState.AWAITING_FILE
                and slide.file_path == str(path.resolve())
                and slide.size == _size(path)
            )
            if not unchanged:
                _inspect(slide, path, self.cohort.default_mpp)
                self.report.inspected += 1
            if slide.state == SlideState.UNREADABLE:
                self.error(path.name, "slide_unreadable", slide.error_message)
            for warning in slide.warnings:
                self.report.warnings.append({"file": path.name, "message": warning})
            self.progress("inspecting slides", done, total)

    def apply_identity(self) -> None:
        """Case, sample type and label from the TCGA barcode in each file name."""
        for filename in sorted(self.dirty):
            slide = self.slides[filename]
            try:
                barcode = parse_barcode(filename)
            except BarcodeError as exc:
                self.error(filename, exc.code, exc.message)
                continue
            if barcode is None:
                continue
            _apply_barcode(slide, barcode)
            if slide.case_id is None:
                slide.case = self.case(barcode.case_id)

    def apply_sample_sheet(self, rows: Iterable[SampleSheetRow]) -> None:
        for row in rows:
            slide = self.slides.get(row.filename)
            if slide is None:
                self.error(row.filename, "not_in_cohort", "sample sheet row matches no slide")
                continue
            self.dirty.add(row.filename)
            label = sample_type_label(row.sample_type)
            if label != Label.UNKNOWN and slide.label_source != LabelSource.CSV:
                slide.label, slide.label_source = label, LabelSource.SAMPLE_SHEET
            slide.sample_type_name = slide.sample_type_name or row.sample_type
            if row.case_id:
                slide.case = self.case(row.case_id)
            location = PROJECT_LOCATIONS.get(row.project_id.upper())
            if location and not slide.location:
                slide.location = location

    def apply_labels(self, rows: Iterable[LabelRow]) -> None:
        by_name = {name.lower(): name for name in self.slides}
        for row in rows:
            filename = by_name.get(row.filename.lower())
            if filename is None:
                self.error(row.filename, "not_in_cohort", "label file row matches no slide")
                continue
            slide = self.slides[filename]
            self.dirty.add(filename)
            slide.label, slide.label_source = row.label, LabelSource.CSV
            if row.case_id:
                slide.case = self.case(row.case_id)
            if row.location:
                slide.location = row.location.strip().lower()
            if row.split:
                slide.split, slide.split_locked = row.split, True

    def apply_locations(self) -> None:
        """Slides that no file placed get the --location given, else the cohort's default."""
        default = self.location or self.cohort.default_location
        if default:
            for filename in self.dirty:
                slide = self.slides[filename]
                slide.location = slide.location or default

    def unify_locked_splits(self) -> None:
        """A split given by a label file applies to the whole case; conflicts are reported."""
        by_unit: dict[str, str] = {}
        for slide in self.slides.values():
            if slide.split_locked:
                unit = split_unit(slide)
                first = by_unit.setdefault(unit, slide.split)
                if first != slide.split:
                    self.error(
                        slide.original_filename,
                        "split_conflict",
                        f"its case {unit} is in {first} through another slide; kept {first}",
                    )
        for slide in self.slides.values():
            unit = split_unit(slide)
            if unit in by_unit and (slide.split != by_unit[unit] or not slide.split_locked):
                slide.split, slide.split_locked = by_unit[unit], True
                self.dirty.add(slide.original_filename)

    def save(self) -> None:
        new = [s for name, s in self.slides.items() if s.pk is None]
        old = [s for name, s in self.slides.items() if s.pk is not None and name in self.dirty]
        Slide.objects.bulk_create(new, batch_size=1000)
        fields = [
            f.name
            for f in Slide._meta.concrete_fields
            if f.name not in ("id", "cohort", "created_at", "original_filename")
        ]
        Slide.objects.bulk_update(old, fields, batch_size=500)

    def finish(self) -> ImportReport:
        report = self.report
        slides = Slide.objects.filter(cohort=self.cohort)
        report.slides = slides.count()
        report.cases = (
            Case.objects.filter(cohort=self.cohort, slides__isnull=False).distinct().count()
        )
        report.labels = {v: slides.filter(label=v).count() for v in Label.values}
        report.splits = {v: slides.filter(split=v).count() for v in Split.values}
        report.states = {v: slides.filter(state=v).count() for v in SlideState.values}
        return report


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def cohort_import(
    *,
    cohort: Cohort,
    path: Path | None = None,
    manifest: Iterable[ManifestRow] = (),
    sample_sheet: Iterable[SampleSheetRow] = (),
    labels: Iterable[LabelRow] = (),
    location: str | None = None,
    ratios: tuple[float, float, float] = PAPER_RATIOS,
    seed: int = 0,
    progress: Progress | None = None,
) -> ImportReport:
    """Register slide files under ``path`` and manifest rows, label them, split new cases.

    Label precedence: label file, then sample sheet, then TCGA barcode. Cases come from the
    same sources. Units (cases) that have no split yet get one with ``ratios``; splits given by
    the label file are kept. Thumbnails and tissue masks are queued for new ready slides.
    """
    importer = _Importer(cohort, location, progress)
    # Inspection reads files (md5, OpenSlide) and takes long: it runs before the transaction,
    # which then writes every row at once, so a failure leaves nothing half-imported.
    importer.add_manifest(manifest)
    if path is not None:
        importer.add_files(discover_slide_files(path))
    with transaction.atomic():
        importer.apply_identity()
        importer.apply_sample_sheet(sample_sheet)
        importer.apply_labels(labels)
        importer.apply_locations()
        importer.unify_locked_splits()
        importer.save()
        cohort_split(cohort=cohort, ratios=ratios, seed=seed, only_unassigned=True)
        pending = list(
            Slide.objects.filter(cohort=cohort, state=SlideState.READY, thumbnail="").values_list(
                "pk", flat=True
            )
        )
        transaction.on_commit(lambda: _queue_tissue(pending))
    return importer.finish()


def _queue_tissue(slide_ids: list[int]) -> None:
    from slides.tasks import compute_slide_tissue

    for slide_id in slide_ids:
        compute_slide_tissue.delay(slide_id)
