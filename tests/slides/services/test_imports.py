from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from slides.models import Case, Slide, SlideState
from slides.services import cohort_import
from slides.wsi.label_files import parse_gdc_manifest, parse_label_csv
from slides.wsi.tcga import parse_barcode

pytestmark = pytest.mark.django_db
MANIFEST = "manifests/gdc_manifest_tcga_frozen_breast_kidney_lung.txt"


def test_real_gdc_manifest(cohort, shared_data: Path) -> None:
    rows = parse_gdc_manifest((shared_data / MANIFEST).read_bytes())
    report = cohort_import(cohort=cohort, manifest=rows, location="mixed")
    barcodes = [parse_barcode(r.filename) for r in rows]
    assert all(b is not None for b in barcodes)
    expected_cases = {b.case_id for b in barcodes if b}
    expected_tumor = sum(1 for b in barcodes if b and b.label == "tumor")
    expected_normal = sum(1 for b in barcodes if b and b.label == "normal")

    assert report.slides == len(rows) == Slide.objects.filter(cohort=cohort).count()
    assert report.cases == len(expected_cases) == Case.objects.filter(cohort=cohort).count()
    assert report.labels == {"tumor": expected_tumor, "normal": expected_normal, "unknown": 0}
    assert report.states == {"awaiting_file": len(rows), "ready": 0, "unreadable": 0}
    assert report.errors == []

    # Case-level split: no case in two splits, sizes close to 65/15/20.
    splits_of_case: dict[str, set[str]] = defaultdict(set)
    for case_id, split in Slide.objects.filter(cohort=cohort).values_list(
        "case__submitter_id", "split"
    ):
        splits_of_case[case_id].add(split)
    assert all(len(s) == 1 for s in splits_of_case.values())
    n_cases = len(splits_of_case)
    for name, ratio in (("train", 0.65), ("val", 0.15), ("test", 0.20)):
        share = sum(1 for s in splits_of_case.values() if name in s) / n_cases
        assert abs(share - ratio) <= 0.02, (name, share)
        assert abs(report.splits[name] / report.slides - ratio) <= 0.02
    assert report.splits["unassigned"] == 0


def test_manifest_import_is_idempotent(cohort, shared_data: Path) -> None:
    rows = parse_gdc_manifest((shared_data / MANIFEST).read_bytes())[:300]
    first = cohort_import(cohort=cohort, manifest=rows)
    splits = dict(Slide.objects.values_list("original_filename", "split"))
    second = cohort_import(cohort=cohort, manifest=rows)
    assert second.registered == 0
    assert (second.slides, second.cases, second.labels, second.splits) == (
        first.slides, first.cases, first.labels, first.splits,
    )  # fmt: skip
    assert dict(Slide.objects.values_list("original_filename", "split")) == splits


def test_real_slides_and_bad_files(cohort, real_slides_dir: Path) -> None:
    report = cohort_import(cohort=cohort, path=real_slides_dir)
    slides = {s.original_filename: s for s in Slide.objects.filter(cohort=cohort)}
    # The CSV beside the slides is not a slide; the text file named .svs is one that failed.
    assert set(slides) == {
        "cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs", "broken.svs", "notes.svs",
    }  # fmt: skip

    cmu = slides["cmu-1-small-region.svs"]
    assert cmu.state == SlideState.READY
    assert (cmu.width, cmu.height) == (2220, 2967)
    assert cmu.mpp == pytest.approx(0.499, abs=1e-3) and not cmu.mpp_assumed
    assert cmu.vendor == "aperio" and cmu.objective_power == 20
    assert (
        len(cmu.md5) == 32 and cmu.size == (real_slides_dir / cmu.original_filename).stat().st_size
    )
    assert cmu.label == "unknown" and cmu.case is None

    tcga = slides["tcga-cr-7395-01a-01-ts1.svs"]
    assert tcga.state == SlideState.READY
    assert tcga.mpp_assumed and tcga.mpp == pytest.approx(0.5)
    assert tcga.warnings and "assum" in " ".join(tcga.warnings).lower()
    assert tcga.label == "tumor" and tcga.label_source == "barcode"
    assert tcga.sample_type_code == "01" and tcga.slide_type == "TS"
    assert tcga.case is not None and tcga.case.submitter_id == "TCGA-CR-7395"
    assert tcga.level_count == 2

    for bad in ("broken.svs", "notes.svs"):
        slide = slides[bad]
        assert slide.state == SlideState.UNREADABLE
        assert bad in slide.error_message
        assert (
            "not a whole-slide image" in slide.error_message or "unreadable" in slide.error_message
        )
    assert {e["file"] for e in report.errors} == {"broken.svs", "notes.svs"}
    assert report.states == {"awaiting_file": 0, "ready": 2, "unreadable": 2}
    assert any(w["file"] == "tcga-cr-7395-01a-01-ts1.svs" for w in report.warnings)


def test_label_csv_overrides_barcodes_and_fixes_splits(cohort, real_slides_dir: Path) -> None:
    labels = parse_label_csv(
        "filename,label,case_id,location,split\n"
        "cmu-1-small-region.svs,normal,CMU-1,skin,test\n"
        "tcga-cr-7395-01a-01-ts1.svs,tumor,,head and neck,\n"
        "missing.svs,tumor,,,\n"
    )
    report = cohort_import(cohort=cohort, path=real_slides_dir, labels=labels, location="other")
    cmu = Slide.objects.get(original_filename="cmu-1-small-region.svs")
    assert (cmu.label, cmu.label_source, cmu.location, cmu.split) == (
        "normal",
        "csv",
        "skin",
        "test",
    )
    assert cmu.split_locked and cmu.case and cmu.case.submitter_id == "CMU-1"
    tcga = Slide.objects.get(original_filename="tcga-cr-7395-01a-01-ts1.svs")
    assert tcga.label_source == "csv" and tcga.location == "head and neck"
    assert Slide.objects.get(original_filename="broken.svs").location == "other"
    assert {"file": "missing.svs", "code": "not_in_cohort",
            "message": "label file row matches no slide"} in report.errors  # fmt: skip
    # Re-splitting keeps the split the label file gave.
    from slides.services import cohort_split

    cohort_split(cohort=cohort, seed=9)
    assert Slide.objects.get(pk=cmu.pk).split == "test"


def test_manifest_then_files_arrive_md5_checked(cohort, shared_data: Path, tmp_path: Path) -> None:
    import hashlib

    slide_file = shared_data / "slides" / "cmu-1-small-region.svs"
    good = hashlib.md5(slide_file.read_bytes()).hexdigest()
    manifest = parse_gdc_manifest(
        "id\tfilename\tmd5\tsize\tstate\n"
        f"u1\tgood.svs\t{good}\t{slide_file.stat().st_size}\tvalidated\n"
        f"u2\tcorrupt.svs\t{'0' * 32}\t{slide_file.stat().st_size}\tvalidated\n"
        f"u3\tlater.svs\t{good}\t{slide_file.stat().st_size}\tvalidated\n"
    )
    cohort_import(cohort=cohort, manifest=manifest)
    assert set(Slide.objects.values_list("state", flat=True)) == {"awaiting_file"}
    folder = tmp_path / "downloads"
    folder.mkdir()
    for name in ("good.svs", "corrupt.svs"):
        (folder / name).symlink_to(slide_file)
    report = cohort_import(cohort=cohort, path=folder, manifest=manifest)
    states = dict(Slide.objects.values_list("original_filename", "state"))
    assert states == {
        "good.svs": "ready",
        "corrupt.svs": "unreadable",
        "later.svs": "awaiting_file",
    }
    corrupt = Slide.objects.get(original_filename="corrupt.svs")
    assert "md5" in corrupt.error_message and "manifest" in corrupt.error_message
    assert Slide.objects.get(original_filename="good.svs").gdc_file_id == "u1"
    assert [e["file"] for e in report.errors] == ["corrupt.svs"]


def test_non_ascii_file_name(cohort, shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ümlaut"
    folder.mkdir()
    (folder / "Schnitt_é_ü.svs").symlink_to(shared_data / "slides" / "cmu-1-small-region.svs")
    cohort_import(cohort=cohort, path=folder)
    slide = Slide.objects.get(cohort=cohort)
    assert slide.original_filename == "Schnitt_é_ü.svs" and slide.state == "ready"
