from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import LabelFileError
from slides.wsi.label_files import (
    parse_gdc_manifest,
    parse_label_csv,
    parse_sample_sheet,
    sample_type_label,
)

MANIFEST_HEADER = "id\tfilename\tmd5\tsize\tstate\n"
ROW = (
    "0f-1\tTCGA-BH-A0B7-11A-03-TSC.f0571ac2.svs\t157dcc1c6912c10f274314f1b0c9dae3"
    "\t85387343\tvalidated\n"
)


def test_real_manifest_parses(shared_data: Path) -> None:
    path = shared_data / "manifests" / "gdc_manifest_tcga_frozen_breast_kidney_lung.txt"
    rows = parse_gdc_manifest(path.read_bytes())
    lines = [line for line in path.read_text().splitlines()[1:] if line.strip()]
    assert len(rows) == len(lines)
    assert len({r.filename for r in rows}) == len(rows)
    assert all(len(r.md5) == 32 and r.size > 0 for r in rows)


def test_manifest_errors_name_the_line() -> None:
    with pytest.raises(LabelFileError, match="md5"):
        parse_gdc_manifest(MANIFEST_HEADER + ROW.replace("157dcc1c", "zzzz"))
    with pytest.raises(LabelFileError, match="Line 2 .* size"):
        parse_gdc_manifest(MANIFEST_HEADER + ROW.replace("85387343", "big"))
    with pytest.raises(LabelFileError, match="lacks the column"):
        parse_gdc_manifest("id\tname\n1\tx\n")
    with pytest.raises(LabelFileError, match="repeats"):
        parse_gdc_manifest(MANIFEST_HEADER + ROW + ROW)
    with pytest.raises(LabelFileError, match="no file"):
        parse_gdc_manifest(MANIFEST_HEADER)
    with pytest.raises(LabelFileError, match="UTF-8"):
        parse_gdc_manifest(b"\xff\xfe\x00bad")
    with pytest.raises(LabelFileError, match="file name"):
        parse_gdc_manifest(MANIFEST_HEADER + ROW.replace("TCGA-BH", "../TCGA-BH"))


def test_label_csv_aliases_and_optional_columns() -> None:
    rows = parse_label_csv(
        "filename,label,case_id,location,split\n"
        "a.svs,Tumour,P1,Lung,train\n"
        "b.svs,0,,,\n"
        "c.svs,unknown,P2,,validation\n"
    )
    assert [(r.filename, r.label, r.case_id, r.location, r.split) for r in rows] == [
        ("a.svs", "tumor", "P1", "Lung", "train"),
        ("b.svs", "normal", None, None, None),
        ("c.svs", "unknown", "P2", None, "val"),
    ]


def test_label_csv_refuses_bad_values() -> None:
    with pytest.raises(LabelFileError, match="Line 2 .*'maybe'"):
        parse_label_csv("filename,label\na.svs,maybe\n")
    with pytest.raises(LabelFileError, match="split"):
        parse_label_csv("filename,label,split\na.svs,tumor,holdout\n")
    with pytest.raises(LabelFileError, match="lacks the column.*label"):
        parse_label_csv("filename,diagnosis\na.svs,tumor\n")
    with pytest.raises(LabelFileError, match="repeats"):
        parse_label_csv("filename,label\na.svs,tumor\nA.svs,normal\n")
    with pytest.raises(LabelFileError, match="more fields"):
        parse_label_csv("filename,label\na.svs,tumor,extra\n")


def test_sample_sheet() -> None:
    sheet = (
        "File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID"
        "\tSample Type\n"
        "u1\tTCGA-BH-A0B7-11A-03-TSC.x.svs\tBiospecimen\tSlide Image\tTCGA-BRCA\tTCGA-BH-A0B7"
        "\tTCGA-BH-A0B7-11A\tSolid Tissue Normal\n"
    )
    (row,) = parse_sample_sheet(sheet)
    assert row.case_id == "TCGA-BH-A0B7" and row.project_id == "TCGA-BRCA"
    assert sample_type_label(row.sample_type) == "normal"
    assert sample_type_label("Primary Tumor") == "tumor"
    assert sample_type_label("Metastatic") == "tumor"
    assert sample_type_label("Control Analyte") == "unknown"
