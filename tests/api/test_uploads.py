"""Resumable slide uploads: resume after an interruption, refusals that store nothing, names."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.http import UnreadablePostError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from common.errors import InvalidInputError
from slides.models import Membership, Slide, SlideState, Upload, UploadState
from slides.services import cohort_create
from slides.services.uploads import sanitize_filename, upload_write_chunk

CHUNK = 256 * 1024


class _DroppingStream:
    """A request body whose client disconnects after some bytes, as a WSGI server reports it."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        data = self.stream.read(size)
        if not data:
            raise UnreadablePostError("connection reset by peer")
        return data


class Env:
    def __init__(self, client: APIClient, cohort: Any, slides_dir: Path, upload_dir: Path) -> None:
        self.client = client
        self.cohort = cohort
        self.slides_dir = slides_dir
        self.upload_dir = upload_dir

    def create(self, name: str, data: bytes, **extra: Any) -> Any:
        body = {"filename": name, "size": len(data), "md5": hashlib.md5(data).hexdigest(), **extra}
        return self.client.post(f"/api/cohorts/{self.cohort.pk}/uploads", body, format="json")

    def put(self, upload_id: int, data: bytes, start: int, total: int, **extra: Any) -> Any:
        end = start + len(data) - 1
        return self.client.put(
            f"/api/uploads/{upload_id}", data, content_type="application/octet-stream",
            HTTP_CONTENT_RANGE=f"bytes {start}-{end}/{total}", **extra,
        )  # fmt: skip

    def upload(self, name: str, data: bytes, chunk: int = CHUNK) -> Any:
        created = self.create(name, data)
        assert created.status_code == 201, created.content
        upload_id = created.json()["id"]
        response = None
        for start in range(0, len(data), chunk):
            response = self.put(upload_id, data[start : start + chunk], start, len(data))
            if response.status_code >= 400:
                return response
        return response

    def stored_files(self) -> list[Path]:
        folder = self.slides_dir / str(self.cohort.pk)
        return sorted(p for p in folder.iterdir()) if folder.is_dir() else []

    def temp_files(self) -> list[Path]:
        return sorted(self.upload_dir.iterdir()) if self.upload_dir.is_dir() else []

    def assert_nothing_stored(self) -> None:
        assert not Slide.objects.filter(cohort=self.cohort).exists()
        assert self.stored_files() == []
        assert self.temp_files() == []


@pytest.fixture
def env(db: None, settings: Any, tmp_path: Path) -> Env:
    settings.SLIDES_DIR = tmp_path / "slides"
    settings.TUMORMAP_UPLOAD_DIR = tmp_path / "uploads"
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    user = get_user_model().objects.create_user("uploader", password="pw-uploader-1")
    owner = get_user_model().objects.create_user("boss", password="pw-boss-123")
    cohort = cohort_create(name="uploads", owner=owner)
    Membership.objects.create(cohort=cohort, user=user, role="manager")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return Env(client, cohort, settings.SLIDES_DIR, settings.TUMORMAP_UPLOAD_DIR)


@pytest.fixture(scope="module")
def cmu_bytes(shared_data: Path) -> bytes:
    return (shared_data / "slides" / "cmu-1-small-region.svs").read_bytes()


def test_interrupted_upload_resumes_from_the_server_offset(env: Env, cmu_bytes: bytes) -> None:
    data, total = cmu_bytes, len(cmu_bytes)
    created = env.create("cmu-1-small-region.svs", data)
    assert created.status_code == 201
    upload_id = created.json()["id"]
    for start in (0, CHUNK, 2 * CHUNK):
        response = env.put(upload_id, data[start : start + CHUNK], start, total)
        assert response.status_code == 200, response.content
        assert response.json()["offset"] == start + CHUNK
    # The connection drops in the middle of the fourth chunk: the server got half of it (the
    # test client cannot send a short body, so the request's stream is played here).
    start = 3 * CHUNK
    upload = Upload.objects.get(pk=upload_id)
    with pytest.raises(InvalidInputError) as cut:
        upload_write_chunk(
            upload=upload, content_range=f"bytes {start}-{start + CHUNK - 1}/{total}",
            body=_DroppingStream(data[start : start + CHUNK // 2]), content_length=CHUNK,
        )  # fmt: skip
    assert cut.value.details["offset"] == start

    # The client asks where to resume: HEAD and GET agree.
    head = env.client.head(f"/api/uploads/{upload_id}")
    assert head.status_code == 200 and head["Upload-Offset"] == str(3 * CHUNK)
    offset = env.client.get(f"/api/uploads/{upload_id}").json()["offset"]
    assert offset == 3 * CHUNK
    # A chunk sent from the wrong place is refused with the offset to use.
    wrong = env.put(upload_id, data[CHUNK : 2 * CHUNK], CHUNK, total)
    assert wrong.status_code == 409
    assert wrong.json()["code"] == "upload_offset_mismatch"
    assert wrong.json()["details"]["offset"] == offset

    response = None
    for start in range(offset, total, CHUNK):
        response = env.put(upload_id, data[start : start + CHUNK], start, total)
    assert response is not None and response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == UploadState.COMPLETE and body["offset"] == total
    slide = Slide.objects.get(pk=body["slide"])
    assert slide.state == SlideState.READY
    assert (slide.width, slide.height) == (2220, 2967)
    stored = Path(slide.file_path)
    assert stored.parent == env.slides_dir / str(env.cohort.pk)
    assert hashlib.md5(stored.read_bytes()).hexdigest() == hashlib.md5(data).hexdigest()
    assert slide.md5 == hashlib.md5(data).hexdigest()
    assert env.temp_files() == []
    # After completion the upload takes no more bytes.
    again = env.put(upload_id, data[:CHUNK], 0, total)
    assert again.status_code == 409


def test_second_upload_of_a_name_does_not_overwrite_the_first(env: Env, cmu_bytes: bytes) -> None:
    first = env.upload("cmu-1-small-region.svs", cmu_bytes)
    second = env.upload("cmu-1-small-region.svs", cmu_bytes, chunk=len(cmu_bytes))
    assert first.status_code == second.status_code == 201
    names = sorted(Slide.objects.filter(cohort=env.cohort).values_list("original_filename",
                                                                       flat=True))  # fmt: skip
    assert names == ["cmu-1-small-region.svs", "cmu-1-small-region_1.svs"]
    assert [p.name for p in env.stored_files()] == names
    for path in env.stored_files():
        assert path.read_bytes() == cmu_bytes


def test_tcga_barcode_in_an_uploaded_name_labels_the_slide(env: Env, cmu_bytes: bytes) -> None:
    response = env.upload("TCGA-BH-A0B7-11A-03-TSC.svs", cmu_bytes, chunk=len(cmu_bytes))
    assert response.status_code == 201
    slide = Slide.objects.get(pk=response.json()["slide"])
    assert slide.label == "normal" and slide.case is not None
    assert slide.case.submitter_id == "TCGA-BH-A0B7"
    assert slide.split != "unassigned"


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("slide.txt", "not a slide " * 1000)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "status", "code"),
    [
        ("broken.svs", "broken", 422, "slide_unreadable"),
        ("archive.svs", "zip", 422, "slide_unreadable"),
        ("notes.svs", "text", 422, "slide_unreadable"),
    ],
)
def test_unreadable_content_is_refused_and_nothing_stored(
    env: Env, shared_data: Path, name: str, content: str, status: int, code: str,
    error_shape: Any,
) -> None:  # fmt: skip
    data = {
        "broken": (shared_data / "slides" / "broken.svs").read_bytes(),
        "zip": _zip_bytes(),
        "text": b"This is a text file, not a slide.\n" * 100,
    }[content]
    response = env.upload(name, data, chunk=1000)
    assert response.status_code == status, response.content
    error_shape(response)
    assert response.json()["code"] == code
    env.assert_nothing_stored()
    upload = Upload.objects.get(cohort=env.cohort)
    assert upload.state == UploadState.FAILED and upload.error


def test_checksum_mismatch_is_refused_and_nothing_stored(
    env: Env, cmu_bytes: bytes, error_shape: Any
) -> None:
    created = env.create("cmu.svs", cmu_bytes, md5="0" * 32)
    upload_id = created.json()["id"]
    response = env.put(upload_id, cmu_bytes, 0, len(cmu_bytes))
    assert response.status_code == 400
    error_shape(response)
    assert response.json()["code"] == "checksum_mismatch"
    env.assert_nothing_stored()


def test_sha256_is_accepted_instead_of_md5(env: Env, cmu_bytes: bytes) -> None:
    created = env.client.post(
        f"/api/cohorts/{env.cohort.pk}/uploads",
        {"filename": "cmu.svs", "size": len(cmu_bytes),
         "sha256": hashlib.sha256(cmu_bytes).hexdigest()},
        format="json",
    )  # fmt: skip
    assert created.status_code == 201
    response = env.put(created.json()["id"], cmu_bytes, 0, len(cmu_bytes))
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"filename": "empty.svs", "size": 0}, 400, "size"),
        ({"filename": "archive.zip", "size": 100}, 400, "filename"),
        ({"filename": "../../etc/passwd.svs", "size": 100}, 400, "filename"),
        ({"filename": "..\\..\\boot.svs", "size": 100}, 400, "filename"),
        ({"filename": "..", "size": 100}, 400, "filename"),
        ({"filename": "folder.mrxs", "size": 100}, 400, "filename"),
        ({"filename": "x.svs", "size": 100, "md5": ""}, 400, "md5"),
        ({"filename": "x.svs", "size": 100, "md5": "xyz"}, 400, "md5"),
        ({"filename": "x.svs", "size": -5}, 400, "size"),
    ],
)
def test_refused_before_any_byte(env: Env, body: dict[str, Any], status: int, field: str,
                                 error_shape: Any) -> None:  # fmt: skip
    body = {"md5": "a" * 32, **body}
    response = env.client.post(f"/api/cohorts/{env.cohort.pk}/uploads", body, format="json")
    assert response.status_code == status, response.content
    error_shape(response)
    payload = response.json()
    assert field in payload["details"] or payload["details"].get("field") == field, payload
    assert not Upload.objects.exists()
    env.assert_nothing_stored()


def test_oversized_upload_is_413(env: Env, settings: Any, error_shape: Any) -> None:
    settings.TUMORMAP_MAX_UPLOAD_BYTES = 1000
    response = env.create("big.svs", b"x" * 1001)
    assert response.status_code == 413
    error_shape(response)
    assert response.json()["code"] == "payload_too_large"
    env.assert_nothing_stored()


def test_oversized_chunk_is_413(env: Env, settings: Any, error_shape: Any) -> None:
    settings.TUMORMAP_UPLOAD_CHUNK_MAX_BYTES = 100
    created = env.create("x.svs", b"y" * 300)
    response = env.put(created.json()["id"], b"y" * 200, 0, 300)
    assert response.status_code == 413
    error_shape(response)
    assert env.client.get(f"/api/uploads/{created.json()['id']}").json()["offset"] == 0


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 400), ("bytes 0-4/99", 400), ("bytes 4-0/10", 400), ("items 0-4/10", 400),
     ("bytes 0-10/10", 400), ("bytes 5-9/10", 409)],
)  # fmt: skip
def test_bad_content_range(env: Env, header: str | None, status: int, error_shape: Any) -> None:
    created = env.create("x.svs", b"z" * 10)
    extra = {"HTTP_CONTENT_RANGE": header} if header else {}
    response = env.client.put(
        f"/api/uploads/{created.json()['id']}", b"z" * 5,
        content_type="application/octet-stream", **extra,
    )  # fmt: skip
    assert response.status_code == status, response.content
    error_shape(response)


def test_abort_removes_the_partial_file(env: Env) -> None:
    created = env.create("x.svs", b"z" * 10)
    upload_id = created.json()["id"]
    assert env.put(upload_id, b"z" * 5, 0, 10).status_code == 200
    assert len(env.temp_files()) == 1
    assert env.client.delete(f"/api/uploads/{upload_id}").status_code == 204
    assert env.temp_files() == []
    assert env.put(upload_id, b"z" * 5, 5, 10).status_code == 409


def test_stale_uploads_are_aborted_by_the_scheduled_task(env: Env, settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from slides.tasks import purge_stale_uploads

    stale_id = env.create("old.svs", b"o" * 10).json()["id"]
    fresh_id = env.create("new.svs", b"n" * 10).json()["id"]
    assert env.put(stale_id, b"o" * 5, 0, 10).status_code == 200
    assert env.put(fresh_id, b"n" * 5, 0, 10).status_code == 200
    assert len(env.temp_files()) == 2
    Upload.objects.filter(pk=stale_id).update(updated_at=timezone.now() - timedelta(days=8))

    assert purge_stale_uploads.apply().get() == {"aborted": 1}
    assert Upload.objects.get(pk=stale_id).state == UploadState.ABORTED
    assert Upload.objects.get(pk=fresh_id).state == UploadState.RECEIVING
    assert len(env.temp_files()) == 1  # the fresh upload's partial file is kept
    # The fresh upload still takes its last chunk (then fails as not a slide, not as aborted).
    assert env.put(fresh_id, b"n" * 5, 5, 10).status_code != 409
    assert purge_stale_uploads.apply().get() == {"aborted": 0}
    # celery beat runs it on the cpu queue.
    entry = settings.CELERY_BEAT_SCHEDULE["purge-stale-uploads"]
    assert entry["task"] == "slides.purge_stale_uploads" and entry["options"]["queue"] == "cpu"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("Schnitt-Größe-切片.svs", "Schnitt-Größe-切片.svs"),
        ("a\x00b\x1fc\u200b.svs", "abc.svs"),
        ("  .hidden.svs  ", "hidden.svs"),
        ('what?<>"|*.tif', "what______.tif"),
        ("slide.SVS", "slide.SVS"),
        ("x" * 400 + ".ndpi", "x" * 242 + ".ndpi"),
    ],
)
def test_sanitize_filename(given: str, kept: str) -> None:
    assert sanitize_filename(given) == kept


def test_non_ascii_name_is_kept_through_an_upload(env: Env, cmu_bytes: bytes) -> None:
    response = env.upload("Schnitt-Größe-切片.svs", cmu_bytes, chunk=len(cmu_bytes))
    assert response.status_code == 201
    assert [p.name for p in env.stored_files()] == ["Schnitt-Größe-切片.svs"]


def test_viewers_and_annotators_cannot_upload(env: Env) -> None:
    user = get_user_model().objects.create_user("drawer", password="pw-drawer-12")
    Membership.objects.create(cohort=env.cohort, user=user, role="annotator")
    client = APIClient()
    client.force_authenticate(user)
    body = {"filename": "x.svs", "size": 10, "md5": "a" * 32}
    response = client.post(f"/api/cohorts/{env.cohort.pk}/uploads", body, format="json")
    assert response.status_code == 403


def test_label_file_kinds_are_detected(env: Env, cmu_bytes: bytes, error_shape: Any) -> None:
    assert (
        env.upload("TCGA-BH-A0B7-01A-03-TSC.svs", cmu_bytes, chunk=len(cmu_bytes)).status_code
        == 201
    )
    url = f"/api/cohorts/{env.cohort.pk}/label-file"

    def send(text: str) -> Any:
        from django.core.files.uploadedfile import SimpleUploadedFile

        upload = SimpleUploadedFile("labels.txt", text.encode())
        return env.client.post(url, {"file": upload}, format="multipart")

    labels = send("filename,label,location\nTCGA-BH-A0B7-01A-03-TSC.svs,normal,breast\n")
    assert labels.status_code == 200, labels.content
    assert labels.json()["kind"] == "labels"
    slide = Slide.objects.get(cohort=env.cohort)
    assert (slide.label, slide.location) == ("normal", "breast")

    sheet = send(
        "File ID\tFile Name\tProject ID\tCase ID\tSample ID\tSample Type\n"
        "f1\tTCGA-BH-A0B7-01A-03-TSC.svs\tTCGA-BRCA\tTCGA-BH-A0B7\ts1\tPrimary Tumor\n"
    )
    assert sheet.status_code == 200 and sheet.json()["kind"] == "sample_sheet"

    manifest = send("id\tfilename\tmd5\tsize\tstate\n"
                    f"abc\tother.svs\t{'b' * 32}\t123\treleased\n")  # fmt: skip
    assert manifest.status_code == 200 and manifest.json()["kind"] == "manifest"
    assert Slide.objects.filter(cohort=env.cohort, original_filename="other.svs",
                                state=SlideState.AWAITING_FILE).exists()  # fmt: skip

    bad = send("filename,label\nTCGA-BH-A0B7-01A-03-TSC.svs,tumor\nx.svs,purple\n")
    assert bad.status_code == 400
    error_shape(bad)
    assert bad.json()["code"] == "invalid_label_file"
    assert bad.json()["details"]["line"] == 3
    assert "Line 3" in bad.json()["message"]


def test_deleting_a_cohort_removes_its_uploaded_files(
    env: Env, cmu_bytes: bytes, django_capture_on_commit_callbacks: Any
) -> None:
    from slides.services.members import cohort_delete

    assert env.upload("cmu.svs", cmu_bytes, chunk=len(cmu_bytes)).status_code == 201
    partial = env.create("partial.svs", cmu_bytes).json()["id"]
    assert env.put(partial, cmu_bytes[:1000], 0, len(cmu_bytes)).status_code == 200
    assert env.stored_files() and env.temp_files()
    with django_capture_on_commit_callbacks(execute=True):
        cohort_delete(cohort=env.cohort)
    assert env.stored_files() == [] and env.temp_files() == []


def test_chunks_stream_past_the_request_body_limit(env: Env, settings: Any,
                                                   cmu_bytes: bytes) -> None:  # fmt: skip
    # Chunks are streamed to disk, never held whole in memory: Django's limit on request
    # bodies read into memory does not apply to them.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = env.upload("cmu.svs", cmu_bytes, chunk=len(cmu_bytes))
    assert response.status_code == 201, response.content
