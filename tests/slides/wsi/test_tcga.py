from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from common.errors import BarcodeError
from slides.wsi.tcga import (
    SAMPLE_TYPES,
    TcgaBarcode,
    case_id_from_name,
    label_for_sample_type,
    parse_barcode,
)

GDC_NAME = "TCGA-BH-A0B7-11A-03-TSC.f0571ac2-0655-42b9-895e-e7b4ddc6d16e.svs"


def test_gdc_file_name() -> None:
    barcode = parse_barcode(GDC_NAME)
    assert barcode == TcgaBarcode(
        barcode="TCGA-BH-A0B7-11A-03-TSC",
        tss="BH",
        participant="A0B7",
        case_id="TCGA-BH-A0B7",
        sample_type_code="11",
        sample_type_name="Solid Tissue Normal",
        label="normal",
        vial="A",
        portion="03",
        slide_type="TS",
        slide_order="C",
    )


def test_lower_case_name_is_canonicalised() -> None:
    barcode = parse_barcode("tcga-cr-7395-01a-01-ts1.svs")
    assert barcode is not None
    assert barcode.barcode == "TCGA-CR-7395-01A-01-TS1"
    assert barcode.case_id == "TCGA-CR-7395"
    assert (barcode.label, barcode.sample_type_name) == ("tumor", "Primary Solid Tumor")
    assert (barcode.slide_type, barcode.slide_order) == ("TS", "1")


@pytest.mark.parametrize(
    ("name", "slide_type", "order"),
    [
        ("TCGA-AA-3517-01A-01-DX1.svs", "DX", "1"),
        ("TCGA-49-4506-01A-01-BS1.x.svs", "BS", "1"),
        ("TCGA-AB-1234-01A-01-MSA.svs", "MS", "A"),
        ("TCGA-22-0940-11A-01-BS01.31e3.svs", "BS", "01"),
        ("TCGA-B2-3923-01B-10-BS10.80E1.svs", "BS", "10"),
    ],
)
def test_slide_types(name: str, slide_type: str, order: str) -> None:
    barcode = parse_barcode(name)
    assert barcode is not None
    assert (barcode.slide_type, barcode.slide_order) == (slide_type, order)


def test_barcode_inside_a_longer_name() -> None:
    barcode = parse_barcode("/data/upload/scan_TCGA-BH-A0B7-01A-01-TS1_final.svs")
    assert barcode is not None and barcode.barcode == "TCGA-BH-A0B7-01A-01-TS1"


def test_barcode_that_stops_before_the_slide_field() -> None:
    barcode = parse_barcode("TCGA-BH-A0B7-01A.svs")
    assert barcode is not None
    assert (barcode.sample_type_code, barcode.vial) == ("01", "A")
    assert barcode.portion is None and barcode.slide_type is None
    stops_at_portion = parse_barcode("TCGA-BH-A0B7-06A-02")
    assert stops_at_portion is not None
    assert stops_at_portion.portion == "02" and stops_at_portion.slide_type is None
    assert stops_at_portion.label == "tumor"


def test_aliquot_barcode_has_no_slide_type() -> None:
    barcode = parse_barcode("TCGA-02-0001-01C-01D-0182-01.bam")
    assert barcode is not None
    assert (barcode.portion, barcode.slide_type, barcode.label) == ("01", None, "tumor")


@pytest.mark.parametrize("name", ["", "slide.svs", "CMU-1.svs", "tcga.svs", "notTCGA-BH-A0B7"])
def test_names_without_a_barcode(name: str) -> None:
    assert parse_barcode(name) is None
    assert case_id_from_name(name) is None


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("TCGA-BH-A0B7-XXA-03-TSC.svs", "sample"),
        ("TCGA-BH-A0B7-1A-03-TS1.svs", "sample"),
        ("TCGA-BH-A0B7-11A-3-TS1.svs", "portion"),
        ("TCGA-BH-A0B7-11A-03-XY1.svs", "slide"),
        ("TCGA-BH-A0B7-11A-03-TS.svs", "slide"),
        ("TCGA-BH-A0B7-11A-03-TS1-extra.svs", "extra"),
        ("TCGA-B-A0B7-11A-03-TS1.svs", "tss"),
        ("TCGA-BH-A0B-11A-03-TS1.svs", "participant"),
        ("TCGA-BH-A0B7.svs", "sample"),
        ("TCGA-BH-A0B7-11A-.svs", "portion"),
    ],
)
def test_malformed_barcodes_raise_with_the_field(name: str, field: str) -> None:
    with pytest.raises(BarcodeError) as info:
        parse_barcode(name)
    assert info.value.details["field"] == field
    assert name in info.value.message
    assert info.value.code == "invalid_barcode"


def test_truncated_token_raises() -> None:
    with pytest.raises(BarcodeError, match="truncated"):
        parse_barcode("TCGA-.svs")


def test_case_id_from_name() -> None:
    assert case_id_from_name(GDC_NAME) == "TCGA-BH-A0B7"
    # A bare case id has no label, but its case is still known.
    assert case_id_from_name("tcga-bh-a0b7 notes.txt") == "TCGA-BH-A0B7"


def test_labels_of_sample_type_codes() -> None:
    assert [label_for_sample_type(f"{c:02d}") for c in (1, 9, 10, 19, 20, 29, 40, 60)] == [
        "tumor",
        "tumor",
        "normal",
        "normal",
        "control",
        "control",
        "unknown",
        "unknown",
    ]
    for code in [f"{c:02d}" for c in range(1, 15)] + ["20", "40", "50", "60", "61"]:
        assert code in SAMPLE_TYPES
    unknown = parse_barcode("TCGA-BH-A0B7-77A")
    assert unknown is not None and unknown.label == "unknown"
    assert "77" in unknown.sample_type_name


def test_every_file_of_the_gdc_manifest_parses(gdc_manifest: Path) -> None:
    with gdc_manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 6481
    labels: Counter[str] = Counter()
    cases: set[str] = set()
    for row in rows:
        barcode = parse_barcode(row["filename"])
        assert barcode is not None, row["filename"]
        assert barcode.slide_type in {"TS", "BS", "MS"}  # the cohort is flash-frozen only
        assert row["filename"].upper().startswith(barcode.barcode + ".")
        labels[barcode.label] += 1
        cases.add(barcode.case_id)
    # Measured on this manifest: every slide is tumor or normal, about 3 tumor per normal.
    assert labels == Counter({"tumor": 4775, "normal": 1706})
    assert sum(labels.values()) == len(rows)
    assert len(cases) < len(rows)  # several slides per case: splits must be made by case
