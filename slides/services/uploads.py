"""Resumable uploads of slide files, and label files sent through the web.

A slide file of several GB arrives in ``Content-Range`` chunks, each appended at the offset the
server holds; after an interruption the client asks for that offset and goes on from there.
When the last byte arrives the file is checked (announced checksum, then OpenSlide), moved
atomically into ``SLIDES_DIR/<cohort id>/`` under a name that never overwrites another, and
registered through the ordinary import (labels from TCGA barcodes, md5, metadata, split). A file
that fails a check is deleted and nothing is registered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import unicodedata
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Protocol

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from common.errors import (
    ConflictError,
    InvalidInputError,
    LabelFileError,
    PayloadTooLargeError,
    SlideUnreadableError,
    TumorMapError,
)
from slides.models import Cohort, Slide, SlideState, Upload, UploadState
from slides.services.imports import SLIDE_EXTENSIONS, ImportReport, cohort_import
from slides.wsi.label_files import parse_gdc_manifest, parse_label_csv, parse_sample_sheet
from slides.wsi.reader import SlideReader

logger = logging.getLogger(__name__)

# Formats that are a folder of files (MIRAX, VMS) or usually a series (DICOM) cannot arrive as
# one upload; they are imported from disk instead.
UPLOAD_EXTENSIONS = frozenset(SLIDE_EXTENSIONS - {".mrxs", ".vms", ".vmu", ".dcm"})
# Bytes copied per read while receiving and hashing: large enough to keep the disk streaming,
# small enough that 8 threads of a web worker stay far below its memory.
COPY_BUFFER = 1024 * 1024
# Longest file name most file systems accept, in bytes of UTF-8.
MAX_FILENAME_BYTES = 255
# Free space kept on the upload disk beyond an upload's size, so that a full disk never takes
# the database or the broker (under the same VAR_DIR) down with it.
FREE_SPACE_MARGIN = 1024**3
# A name that exists already gets "_1", "_2"... before its extension; "_" keeps a TCGA barcode
# in the name parseable (a "-1" would read as a barcode field).
MAX_NAME_SUFFIX = 10_000
# An upload left unfinished this long is abandoned: its partial file may be removed.
STALE_UPLOAD_AGE = timedelta(days=7)
# Label files (CSV, GDC manifest, sample sheet) are text: the manifest of the paper's 6,481
# slides is under 1 MB.
MAX_LABEL_FILE_BYTES = 32 * 1024**2

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE)
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Characters that Windows, shells or URLs treat specially: replaced, never passed on.
_RESERVED = str.maketrans({c: "_" for c in '<>:"|?*'})


class ChecksumMismatchError(InvalidInputError):
    code = "checksum_mismatch"


class UploadOffsetError(ConflictError):
    """A chunk that does not start where the stored bytes end."""

    code = "upload_offset_mismatch"


class UploadStateError(ConflictError):
    code = "upload_not_receiving"


class InsufficientStorageError(TumorMapError):
    code = "insufficient_storage"
    http_status = 507


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


# -- names -------------------------------------------------------------------------------------


def sanitize_filename(name: str) -> str:
    """A safe file name for an uploaded slide, or InvalidInputError.

    Paths are refused (a browser sends a base name; anything else is a mistake or an attack);
    control and format characters are removed, characters special to shells and Windows are
    replaced by ``_``, leading dots and surrounding blanks are stripped. Letters of any script
    are kept. The extension must be one of a single-file slide format.
    """
    original = name
    name = unicodedata.normalize("NFC", name)
    if "/" in name or "\\" in name:
        raise InvalidInputError(
            f"{original!r} is a path: send the file's name only.", details={"field": "filename"}
        )
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    name = name.translate(_RESERVED).strip().lstrip(".").rstrip(". ")
    if not name or name in (".", ".."):
        raise InvalidInputError(
            f"{original!r} is not a usable file name.", details={"field": "filename"}
        )
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_EXTENSIONS:
        raise InvalidInputError(
            f"{name!r} does not have the extension of a single-file slide format "
            f"({', '.join(sorted(UPLOAD_EXTENSIONS))}).",
            details={"field": "filename", "extensions": sorted(UPLOAD_EXTENSIONS)},
        )
    stem = name[: -len(suffix)]
    while len((stem + suffix).encode()) > MAX_FILENAME_BYTES - 8:  # room for a "_NNNN" suffix
        stem = stem[:-1]
    if not stem.strip():
        raise InvalidInputError(f"{original!r} has no name before its extension.")
    return stem + Path(name).suffix


def upload_temp_path(upload: Upload) -> Path:
    """Where the bytes of an unfinished upload are kept (the slide's extension kept, so that
    OpenSlide reads it as it will read the final file)."""
    return Path(settings.TUMORMAP_UPLOAD_DIR) / f"upload-{upload.pk}{Path(upload.filename).suffix}"


# -- creating ----------------------------------------------------------------------------------


def upload_create(
    *,
    cohort: Cohort,
    filename: str,
    size: int,
    md5: str = "",
    sha256: str = "",
    user: AbstractBaseUser | None = None,
) -> Upload:
    """Announce an upload: name, size and checksum (md5 or sha256, hex); nothing is stored
    until chunks arrive."""
    name = sanitize_filename(filename)
    md5, sha256 = md5.strip().lower(), sha256.strip().lower()
    if not md5 and not sha256:
        raise InvalidInputError(
            "Give the file's md5 or sha256 so that the upload can be verified.",
            details={"field": "md5"},
        )
    if md5 and not _MD5_RE.match(md5):
        raise InvalidInputError("md5 must be 32 hexadecimal digits.", details={"field": "md5"})
    if sha256 and not _SHA256_RE.match(sha256):
        raise InvalidInputError(
            "sha256 must be 64 hexadecimal digits.", details={"field": "sha256"}
        )
    if size <= 0:
        raise InvalidInputError(
            f"{name!r} is empty: a slide file has content.", details={"field": "size"}
        )
    limit = int(settings.TUMORMAP_MAX_UPLOAD_BYTES)
    if size > limit:
        raise PayloadTooLargeError(
            f"{name!r} is {size} bytes; uploads are limited to {limit} bytes.",
            details={"size": size, "limit": limit},
        )
    folder = Path(settings.TUMORMAP_UPLOAD_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < size + FREE_SPACE_MARGIN:
        raise InsufficientStorageError(
            f"The server has {free} bytes free for uploads; {name!r} needs {size}.",
            details={"size": size, "free": free},
        )
    upload = Upload.objects.create(
        cohort=cohort,
        created_by_id=user.pk if user is not None else None,
        filename=name,
        size=size,
        md5=md5,
        sha256=sha256,
    )
    upload_temp_path(upload).touch()
    return upload


# -- receiving ---------------------------------------------------------------------------------


def parse_content_range(header: str | None) -> tuple[int, int, int]:
    """``(start, end_inclusive, total)`` of a ``Content-Range: bytes start-end/total`` header."""
    match = _CONTENT_RANGE_RE.match(header or "")
    if match is None:
        raise InvalidInputError(
            "Each chunk needs a 'Content-Range: bytes START-END/TOTAL' header.",
            details={"header": "Content-Range", "value": header},
        )
    start, end, total = (int(g) for g in match.groups())
    if end < start or end >= total:
        raise InvalidInputError(
            f"Content-Range {header!r} is not a range within the file.",
            details={"header": "Content-Range", "value": header},
        )
    return start, end, total


def _require_receiving(upload: Upload) -> None:
    if upload.state != UploadState.RECEIVING:
        raise UploadStateError(
            f"Upload {upload.pk} is {upload.state}"
            + (f": {upload.error}" if upload.error else "."),
            details={"state": upload.state, "offset": upload.offset},
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    """The partial file, opened for writing and locked: two chunks never write at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    handle = os.fdopen(fd, "r+b")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConflictError(
                "Another chunk of this upload is being written; wait for it to finish."
            ) from None
        yield handle
    finally:
        handle.close()


def upload_write_chunk(
    *,
    upload: Upload,
    content_range: str | None,
    body: Readable,
    content_length: int | None,
) -> Upload:
    """Append one chunk at the upload's offset; completes the upload with its last byte.

    A chunk that does not start at the stored offset is refused (UploadOffsetError, with the
    offset in its details) so that a client resumes exactly where the server is. A chunk cut
    short (dropped connection) is discarded whole.
    """
    start, end, total = parse_content_range(content_range)
    length = end - start + 1
    if total != upload.size:
        raise InvalidInputError(
            f"Content-Range gives a total of {total} bytes; the upload announced {upload.size}.",
            details={"size": upload.size},
        )
    chunk_limit = int(settings.TUMORMAP_UPLOAD_CHUNK_MAX_BYTES)
    if length > chunk_limit:
        raise PayloadTooLargeError(
            f"A chunk holds at most {chunk_limit} bytes; this one has {length}.",
            details={"limit": chunk_limit},
        )
    if content_length is not None and content_length != length:
        raise InvalidInputError(
            f"The body has {content_length} bytes but Content-Range announces {length}.",
            details={"header": "Content-Length"},
        )
    path = upload_temp_path(upload)
    _require_receiving(upload)
    with _locked(path) as handle:
        upload.refresh_from_db(fields=["offset", "state", "error"])
        _require_receiving(upload)
        if start != upload.offset:
            raise UploadOffsetError(
                f"This chunk starts at byte {start}, but the server holds {upload.offset} bytes: "
                f"resume from {upload.offset}.",
                details={"offset": upload.offset, "size": upload.size},
            )
        # Bytes past the offset are the remains of a chunk cut short: overwrite them.
        handle.truncate(start)
        handle.seek(start)
        received = 0
        while received < length:
            try:
                data = body.read(min(COPY_BUFFER, length - received))
            except OSError:  # the client went away (Django's UnreadablePostError, a reset)
                break
            if not data:
                break
            handle.write(data)
            received += len(data)
        if received != length:
            handle.truncate(start)
            raise InvalidInputError(
                f"The chunk ended after {received} of {length} bytes; send it again from "
                f"byte {start}.",
                details={"offset": start},
            )
        handle.flush()
        os.fsync(handle.fileno())
        Upload.objects.filter(pk=upload.pk).update(offset=end + 1, updated_at=timezone.now())
        upload.offset = end + 1
    if upload.offset == upload.size:
        return _finish(upload)
    return upload


# -- finishing ---------------------------------------------------------------------------------


def _fail(upload: Upload, path: Path, error: TumorMapError) -> TumorMapError:
    path.unlink(missing_ok=True)
    upload.state = UploadState.FAILED
    upload.error = error.message
    upload.save(update_fields=["state", "error", "updated_at"])
    logger.info("upload %s of %s refused: %s", upload.pk, upload.filename, error.message)
    return error


def _check_checksum(upload: Upload, path: Path) -> None:
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    with path.open("rb") as handle:
        while data := handle.read(COPY_BUFFER * 8):
            if upload.md5:
                md5.update(data)
            if upload.sha256:
                sha256.update(data)
    for name, expected, digest in (("md5", upload.md5, md5), ("sha256", upload.sha256, sha256)):
        if expected and digest.hexdigest() != expected:
            raise ChecksumMismatchError(
                f"The received {upload.filename!r} has {name} {digest.hexdigest()}, not the "
                f"announced {expected}: it was corrupted on the way. Upload it again.",
                details={"algorithm": name, "expected": expected, "received": digest.hexdigest()},
            )


def _reserve_name(cohort: Cohort, folder: Path, filename: str) -> Path:
    """Create an empty file under a name free on disk and in the cohort; never overwrites."""
    taken = {
        n.lower()
        for n in Slide.objects.filter(cohort=cohort).values_list("original_filename", flat=True)
    }
    stem, suffix = Path(filename).stem, Path(filename).suffix
    for k in range(MAX_NAME_SUFFIX):
        name = filename if k == 0 else f"{stem}_{k}{suffix}"
        if name.lower() in taken:
            continue
        target = folder / name
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue
        return target
    raise ConflictError(f"Too many files named like {filename!r} in this cohort.")


def _move_into_place(source: Path, target: Path) -> None:
    try:
        source.replace(target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Another file system: copy next to the target, then rename (still atomic there).
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(source, partial)
        partial.replace(target)
        source.unlink(missing_ok=True)


def _finish(upload: Upload) -> Upload:
    path = upload_temp_path(upload)
    try:
        _check_checksum(upload, path)
        with SlideReader(path, default_mpp=upload.cohort.default_mpp):
            pass
    except TumorMapError as exc:
        raise _fail(upload, path, exc) from None

    folder = Path(settings.SLIDES_DIR) / str(upload.cohort_id)
    folder.mkdir(parents=True, exist_ok=True)
    target = _reserve_name(upload.cohort, folder, upload.filename)
    try:
        _move_into_place(path, target)
        cohort_import(cohort=upload.cohort, path=target)
        slide = Slide.objects.get(cohort=upload.cohort, original_filename=target.name)
        if slide.state != SlideState.READY:
            slide.delete()
            raise SlideUnreadableError(slide.error_message or f"{target.name} is unreadable.")
    except TumorMapError as exc:
        Slide.objects.filter(cohort=upload.cohort, original_filename=target.name).delete()
        target.unlink(missing_ok=True)
        raise _fail(upload, path, exc) from None
    except BaseException:
        Slide.objects.filter(cohort=upload.cohort, original_filename=target.name).delete()
        target.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        Upload.objects.filter(pk=upload.pk).update(
            state=UploadState.FAILED, error="internal error while registering the slide"
        )
        raise
    upload.state = UploadState.COMPLETE
    upload.slide = slide
    upload.error = ""
    upload.save(update_fields=["state", "slide", "error", "updated_at"])
    logger.info("upload %s registered as slide %s (%s)", upload.pk, slide.pk, target)
    return upload


def upload_abort(*, upload: Upload) -> Upload:
    """Give up an unfinished upload: its partial file is removed."""
    if upload.state != UploadState.RECEIVING:
        raise UploadStateError(
            f"Upload {upload.pk} is {upload.state}: only an unfinished upload can be aborted.",
            details={"state": upload.state},
        )
    path = upload_temp_path(upload)
    with _locked(path):
        path.unlink(missing_ok=True)
        upload.state = UploadState.ABORTED
        upload.save(update_fields=["state", "updated_at"])
    return upload


def uploads_purge_stale(*, older_than: timedelta = STALE_UPLOAD_AGE) -> int:
    """Abort uploads that received nothing for ``older_than``; returns how many."""
    stale = Upload.objects.filter(
        state=UploadState.RECEIVING, updated_at__lt=timezone.now() - older_than
    )
    count = 0
    for upload in stale:
        with contextlib.suppress(ConflictError):
            upload_abort(upload=upload)
            count += 1
    return count


# -- label files -------------------------------------------------------------------------------


def label_file_kind(data: bytes) -> str:
    """``"manifest"``, ``"sample_sheet"`` or ``"labels"``, judged by the header line."""
    first = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").strip().lower()
    columns = {c.strip() for c in re.split(r"[\t,]", first)}
    if {"file name", "sample type"} <= columns:
        return "sample_sheet"
    if {"id", "filename", "md5", "size"} <= columns:
        return "manifest"
    return "labels"


def label_file_import(*, cohort: Cohort, data: bytes) -> tuple[str, ImportReport]:
    """Apply a label CSV, a GDC manifest or a GDC sample sheet to the cohort (detected by its
    header); returns the kind and the import report. A malformed file raises LabelFileError
    naming the line, and changes nothing."""
    if not data.strip():
        raise LabelFileError("The label file is empty.")
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise PayloadTooLargeError(
            f"A label file has at most {MAX_LABEL_FILE_BYTES} bytes.",
            details={"limit": MAX_LABEL_FILE_BYTES},
        )
    kind = label_file_kind(data)
    if kind == "manifest":
        report = cohort_import(cohort=cohort, manifest=parse_gdc_manifest(data))
    elif kind == "sample_sheet":
        report = cohort_import(cohort=cohort, sample_sheet=parse_sample_sheet(data))
    else:
        report = cohort_import(cohort=cohort, labels=parse_label_csv(data))
    return kind, report
