"""Readers of the files that register or label a cohort: GDC manifests, GDC sample sheets and
label CSVs. Each returns typed rows or raises LabelFileError naming the line and the problem."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from common.errors import LabelFileError

LABELS = ("tumor", "normal", "unknown")
SPLITS = ("train", "val", "test", "unassigned")
# Accepted spellings in label CSVs, mapped to the canonical label.
LABEL_ALIASES = {
    "tumor": "tumor", "tumour": "tumor", "1": "tumor", "positive": "tumor", "cancer": "tumor",
    "normal": "normal", "0": "normal", "negative": "normal",
    "unknown": "unknown", "": "unknown",
}  # fmt: skip
SPLIT_ALIASES = {
    "train": "train", "training": "train", "val": "val", "valid": "val",
    "validation": "val", "test": "test", "testing": "test", "": "unassigned",
    "unassigned": "unassigned",
}  # fmt: skip
# GDC writes lower-case hex md5 sums; anything else is a corrupt manifest, not a checksum.
MD5_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ManifestRow:
    file_id: str
    filename: str
    md5: str
    size: int
    state: str


@dataclass(frozen=True)
class SampleSheetRow:
    file_id: str
    filename: str
    project_id: str
    case_id: str
    sample_id: str
    sample_type: str


@dataclass(frozen=True)
class LabelRow:
    filename: str
    label: str
    case_id: str | None
    location: str | None
    split: str | None


def _decode(data: bytes | str, what: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"The {what} is not UTF-8 text (byte {exc.start}).") from exc


def _rows(text: str, delimiter: str, what: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    lowered = {h.lower() for h in header}
    missing = [c for c in required if c.lower() not in lowered]
    if missing:
        raise LabelFileError(
            f"The {what} lacks the column(s) {', '.join(missing)}; its header is "
            f"{', '.join(header) or '(empty)'}.",
            details={"missing_columns": missing, "header": header},
        )
    rows = []
    for row in reader:
        if None in row:
            raise LabelFileError(
                f"Line {reader.line_num} of the {what} has more fields than its header.",
                details={"line": reader.line_num},
            )
        if not any((v or "").strip() for v in row.values()):
            continue  # blank line
        rows.append({k.lower(): (v or "").strip() for k, v in row.items()})
    return rows


def parse_gdc_manifest(data: bytes | str) -> list[ManifestRow]:
    """Parse a GDC download manifest (tab-separated: id, filename, md5, size, state)."""
    text = _decode(data, "GDC manifest")
    rows = _rows(text, "\t", "GDC manifest", ("id", "filename", "md5", "size"))
    parsed: list[ManifestRow] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        md5 = row["md5"].lower()
        if not MD5_RE.match(md5):
            raise LabelFileError(
                f"Line {line} of the GDC manifest has an invalid md5 {row['md5']!r}.",
                details={"line": line},
            )
        try:
            size = int(row["size"])
        except ValueError:
            raise LabelFileError(
                f"Line {line} of the GDC manifest has a size that is not a number: "
                f"{row['size']!r}.",
                details={"line": line},
            ) from None
        filename = row["filename"]
        if not filename or "/" in filename or "\\" in filename:
            raise LabelFileError(
                f"Line {line} of the GDC manifest has an invalid file name {filename!r}.",
                details={"line": line},
            )
        if filename in seen:
            raise LabelFileError(
                f"Line {line} of the GDC manifest repeats the file {filename}.",
                details={"line": line},
            )
        seen.add(filename)
        parsed.append(ManifestRow(row["id"], filename, md5, size, row.get("state", "")))
    if not parsed:
        raise LabelFileError("The GDC manifest lists no file.")
    return parsed


def parse_sample_sheet(data: bytes | str) -> list[SampleSheetRow]:
    """Parse a GDC sample sheet (tab-separated, columns File ID, File Name, Project ID,
    Case ID, Sample ID, Sample Type)."""
    text = _decode(data, "GDC sample sheet")
    required = ("File Name", "Case ID", "Sample Type")
    rows = _rows(text, "\t", "GDC sample sheet", required)
    # GDC lists several values comma-separated when a file spans samples: keep the first.
    return [
        SampleSheetRow(
            file_id=row.get("file id", ""),
            filename=row["file name"],
            project_id=row.get("project id", "").split(",")[0].strip(),
            case_id=row["case id"].split(",")[0].strip(),
            sample_id=row.get("sample id", "").split(",")[0].strip(),
            sample_type=row["sample type"].split(",")[0].strip(),
        )
        for row in rows
    ]


def sample_type_label(sample_type: str) -> str:
    """Label of a GDC sample type name ('Primary Tumor' -> tumor, 'Solid Tissue Normal' ->
    normal)."""
    name = sample_type.lower()
    if "normal" in name:
        return "normal"
    if any(word in name for word in ("tumor", "metasta", "cancer", "recurrent")):
        return "tumor"
    return "unknown"


def parse_label_csv(data: bytes | str) -> list[LabelRow]:
    """Parse a label CSV: columns filename, label and optionally case_id, location, split."""
    text = _decode(data, "label CSV")
    delimiter = (
        "\t" if text.split("\n", 1)[0].count("\t") > text.split("\n", 1)[0].count(",") else ","
    )
    rows = _rows(text, delimiter, "label CSV", ("filename", "label"))
    parsed: list[LabelRow] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        filename = row["filename"]
        if not filename:
            raise LabelFileError(
                f"Line {line} of the label CSV has no filename.", details={"line": line}
            )
        label = LABEL_ALIASES.get(row["label"].lower())
        if label is None:
            raise LabelFileError(
                f"Line {line} of the label CSV has the label {row['label']!r}; expected one of "
                "tumor, normal, unknown.",
                details={"line": line, "label": row["label"]},
            )
        split = None
        if "split" in row:
            split = SPLIT_ALIASES.get(row["split"].lower())
            if split is None:
                raise LabelFileError(
                    f"Line {line} of the label CSV has the split {row['split']!r}; expected one "
                    "of train, val, test.",
                    details={"line": line, "split": row["split"]},
                )
            if split == "unassigned":
                split = None
        key = filename.lower()
        if key in seen:
            raise LabelFileError(
                f"Line {line} of the label CSV repeats {filename}.", details={"line": line}
            )
        seen.add(key)
        parsed.append(
            LabelRow(
                filename=filename,
                label=label,
                case_id=row.get("case_id") or None,
                location=row.get("location") or None,
                split=split,
            )
        )
    return parsed
