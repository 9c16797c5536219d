"""TCGA barcodes: find one in a file name and decode case, sample type, label and slide type.

A slide barcode reads ``TCGA-TSS-PART-SSV-PP-ST``, e.g. ``TCGA-BH-A0B7-11A-03-TSC``:

- ``TSS``: tissue source site (2 characters), ``PART``: participant (4 characters); together with
  the ``TCGA`` prefix they form the case id ``TCGA-BH-A0B7``;
- ``SS``: sample type code (2 digits, 01-09 tumor, 10-19 normal, 20-29 control), ``V``: vial letter;
- ``PP``: portion (2 digits);
- ``ST``: slide type (TS/BS/MS frozen top/bottom/middle section, DX diagnostic FFPE) followed by
  the slide's order (``1``, ``C``, ``01``, ``10`` ...).

GDC file names append ``.<uuid>.svs``; names may be in any case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from common.errors import BarcodeError

Label = Literal["tumor", "normal", "control", "unknown"]

# The GDC "Sample Type Codes" table (https://gdc.cancer.gov/resources-tcga-users/tcga-code-tables).
SAMPLE_TYPES: dict[str, str] = {
    "01": "Primary Solid Tumor",
    "02": "Recurrent Solid Tumor",
    "03": "Primary Blood Derived Cancer - Peripheral Blood",
    "04": "Recurrent Blood Derived Cancer - Bone Marrow",
    "05": "Additional - New Primary",
    "06": "Metastatic",
    "07": "Additional Metastatic",
    "08": "Human Tumor Original Cells",
    "09": "Primary Blood Derived Cancer - Bone Marrow",
    "10": "Blood Derived Normal",
    "11": "Solid Tissue Normal",
    "12": "Buccal Cell Normal",
    "13": "EBV Immortalized Normal",
    "14": "Bone Marrow Normal",
    "15": "sample type 15",
    "16": "sample type 16",
    "20": "Control Analyte",
    "40": "Recurrent Blood Derived Cancer - Peripheral Blood",
    "50": "Cell Lines",
    "60": "Primary Xenograft Tissue",
    "61": "Cell Line Derived Xenograft Tissue",
    "99": "sample type 99",
}

# TS/BS/MS: top, bottom and middle sections of a flash-frozen sample; DX: diagnostic FFPE slide.
SLIDE_TYPES: frozenset[str] = frozenset({"TS", "BS", "MS", "DX"})

# A "TCGA-" that starts a word, then everything a barcode can be made of. The token stops at the
# first character that is neither alphanumeric nor a dash ('.', '_', ' ', end of name), which is
# how GDC names separate the barcode from the file uuid.
_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])TCGA-[A-Za-z0-9-]*", re.IGNORECASE)
_TSS_RE = re.compile(r"[A-Z0-9]{2}")
_PARTICIPANT_RE = re.compile(r"[A-Z0-9]{4}")
_SAMPLE_RE = re.compile(r"(\d{2})([A-Z])?")
_PORTION_RE = re.compile(r"(\d{2})([A-Z])?")
_SLIDE_RE = re.compile(r"([A-Z]{2})([A-Z0-9]{1,2})")
# Aliquot barcodes (portion with an analyte letter) go on with a plate and a sequencing centre.
_PLATE_RE = re.compile(r"[A-Z0-9]{4}")
_CENTER_RE = re.compile(r"\d{2}")


@dataclass(frozen=True)
class TcgaBarcode:
    """A decoded TCGA barcode (at least down to the sample field)."""

    barcode: str
    tss: str
    participant: str
    case_id: str
    sample_type_code: str
    sample_type_name: str
    label: Label
    vial: str | None
    portion: str | None
    slide_type: str | None
    slide_order: str | None


def label_for_sample_type(code: str) -> Label:
    """Map a two-digit sample type code to the label used for training."""
    value = int(code)
    if 1 <= value <= 9:
        return "tumor"
    if 10 <= value <= 19:
        return "normal"
    if 20 <= value <= 29:
        return "control"
    return "unknown"


def _find_token(name: str) -> str | None:
    match = _TOKEN_RE.search(name)
    if match is None:
        return None
    return match.group(0).upper()


def _split_case(token: str, name: str) -> list[str]:
    fields = token.split("-")
    if len(fields) < 3:
        raise BarcodeError(
            f"{name!r}: TCGA barcode {token!r} is truncated (needs TCGA-TSS-PARTICIPANT at least)",
            details={"name": name, "token": token},
        )
    if not _TSS_RE.fullmatch(fields[1]):
        raise BarcodeError(
            f"{name!r}: tissue source site {fields[1]!r} of {token!r} must be 2 letters or digits",
            details={"name": name, "token": token, "field": "tss"},
        )
    if not _PARTICIPANT_RE.fullmatch(fields[2]):
        raise BarcodeError(
            f"{name!r}: participant {fields[2]!r} of {token!r} must be 4 letters or digits",
            details={"name": name, "token": token, "field": "participant"},
        )
    return fields


def case_id_from_name(name: str) -> str | None:
    """Return the case id (``TCGA-TSS-PART``) of the barcode in ``name``, None if it has none.

    Raises :class:`BarcodeError` when a ``TCGA-`` token is present but its case part is malformed.
    """
    token = _find_token(name)
    if token is None:
        return None
    fields = _split_case(token, name)
    return "-".join(fields[:3])


def parse_barcode(name: str) -> TcgaBarcode | None:
    """Find and decode the TCGA barcode in a file name or string, case-insensitively.

    Returns None when ``name`` holds no ``TCGA-`` token at all. Raises :class:`BarcodeError`,
    naming the faulty field, when a token is present but malformed, or when it stops before the
    sample field (a bare case id carries no label).
    """
    token = _find_token(name)
    if token is None:
        return None
    fields = _split_case(token, name)
    details = {"name": name, "token": token}
    if len(fields) < 4 or fields[3] == "":
        raise BarcodeError(
            f"{name!r}: TCGA barcode {token!r} has no sample field (e.g. '01A'), so no label",
            details={**details, "field": "sample"},
        )
    sample = _SAMPLE_RE.fullmatch(fields[3])
    if sample is None:
        raise BarcodeError(
            f"{name!r}: sample field {fields[3]!r} of {token!r} must be a 2-digit sample type "
            "code and a vial letter (e.g. '01A')",
            details={**details, "field": "sample"},
        )
    code, vial = sample.group(1), sample.group(2)
    portion: str | None = None
    slide_type: str | None = None
    slide_order: str | None = None
    rest = fields[4:]
    if rest:
        portion_match = _PORTION_RE.fullmatch(rest[0])
        if portion_match is None:
            raise BarcodeError(
                f"{name!r}: portion field {rest[0]!r} of {token!r} must be 2 digits (e.g. '01')",
                details={**details, "field": "portion"},
            )
        portion = portion_match.group(1)
        analyte = portion_match.group(2)
        if analyte is not None:
            _check_aliquot_tail(rest[1:], token, name)
        elif len(rest) > 1:
            slide_type, slide_order = _parse_slide_field(rest[1], token, name)
            if len(rest) > 2:
                raise BarcodeError(
                    f"{name!r}: unexpected field(s) {'-'.join(rest[2:])!r} after the slide field "
                    f"of {token!r}",
                    details={**details, "field": "extra"},
                )
    return TcgaBarcode(
        barcode=token,
        tss=fields[1],
        participant=fields[2],
        case_id="-".join(fields[:3]),
        sample_type_code=code,
        sample_type_name=SAMPLE_TYPES.get(code, f"unknown sample type {code}"),
        label=label_for_sample_type(code),
        vial=vial,
        portion=portion,
        slide_type=slide_type,
        slide_order=slide_order,
    )


def _parse_slide_field(field: str, token: str, name: str) -> tuple[str, str]:
    match = _SLIDE_RE.fullmatch(field)
    if match is None or match.group(1) not in SLIDE_TYPES:
        raise BarcodeError(
            f"{name!r}: slide field {field!r} of {token!r} must be a slide type "
            f"({'/'.join(sorted(SLIDE_TYPES))}) followed by its order (e.g. 'TS1', 'DX1', 'BSA')",
            details={"name": name, "token": token, "field": "slide"},
        )
    return match.group(1), match.group(2)


def _check_aliquot_tail(tail: list[str], token: str, name: str) -> None:
    checks = (("plate", _PLATE_RE), ("center", _CENTER_RE))
    if len(tail) > len(checks):
        raise BarcodeError(
            f"{name!r}: unexpected field(s) after the sequencing centre of aliquot {token!r}",
            details={"name": name, "token": token, "field": "extra"},
        )
    for (field_name, pattern), value in zip(checks, tail, strict=False):
        if not pattern.fullmatch(value):
            raise BarcodeError(
                f"{name!r}: {field_name} field {value!r} of aliquot barcode {token!r} is malformed",
                details={"name": name, "token": token, "field": field_name},
            )
