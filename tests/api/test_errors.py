"""Every error of the API comes out as {"code", "message", "details"}."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from common.errors import SlideUnreadableError


@pytest.mark.parametrize(
    "path", ["/api/cohorts/", "/api/slides/1/", "/api/runs/", "/api/reports/?cohort=1",
             "/api/slides/1_files/0/0_0.jpeg", "/api/heatmaps/1/overlay.png"],
)  # fmt: skip
def test_anonymous_requests_are_refused_in_the_error_shape(db: None, path: str,
                                                           error_shape: Any) -> None:  # fmt: skip
    response = APIClient().get(path)
    assert response.status_code in (401, 403)
    error_shape(response)
    assert response.json()["code"] == "not_authenticated"


def test_a_bad_token_is_refused(db: None, error_shape: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    response = client.get("/api/cohorts/")
    assert response.status_code in (401, 403)
    error_shape(response)
    assert response.json()["code"] == "authentication_failed"


def test_open_endpoints_need_no_login(db: None) -> None:
    client = APIClient()
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/healthz").status_code in (200, 503)
    assert client.get("/accounts/login/").status_code == 200


def test_token_login(world: Any, error_shape: Any) -> None:
    client = APIClient()
    ok = client.post("/api/auth/token/", {"username": "viewer", "password": "pw-viewer-123"},
                     format="json")  # fmt: skip
    assert ok.status_code == 200 and ok.json()["token"] == world.tokens["viewer"]
    bad = client.post("/api/auth/token/", {"username": "viewer", "password": "nope"},
                      format="json")  # fmt: skip
    assert bad.status_code == 400
    error_shape(bad)


def test_token_requests_are_throttled_per_address(world: Any, error_shape: Any) -> None:
    client = APIClient(REMOTE_ADDR="198.51.100.7")
    for _ in range(10):  # TUMORMAP_AUTH_TOKEN_RATE: 10 a minute by default
        guess = client.post("/api/auth/token/", {"username": "viewer", "password": "guess"},
                            format="json")  # fmt: skip
        assert guess.status_code == 400
    # The eleventh attempt is refused even with the right password, and says when to retry.
    right = {"username": "viewer", "password": "pw-viewer-123"}
    throttled = client.post("/api/auth/token/", right, format="json")
    assert throttled.status_code == 429
    error_shape(throttled)
    assert int(throttled["Retry-After"]) > 0
    # Another address is not affected.
    other = APIClient(REMOTE_ADDR="198.51.100.8").post("/api/auth/token/", right, format="json")
    assert other.status_code == 200 and other.json()["token"] == world.tokens["viewer"]


def test_unknown_api_path_is_404_with_a_hint(world: Any, error_shape: Any) -> None:
    client = world.client("viewer")
    response = client.get("/api/nothing/here")
    assert response.status_code == 404
    error_shape(response)
    assert response.json()["code"] == "not_found"
    slashless = client.get("/api/cohorts")
    assert slashless.status_code == 404
    assert "/api/cohorts/" in slashless.json()["message"]
    # Even without a login: the path does not exist for anyone.
    assert APIClient().post("/api/nothing").status_code == 404


def test_method_not_allowed_is_405(world: Any, error_shape: Any) -> None:
    response = world.client("owner").put("/api/cohorts/", {}, format="json")
    assert response.status_code == 405
    error_shape(response)
    assert response.json()["code"] == "method_not_allowed"


def test_validation_errors_name_the_field(world: Any, error_shape: Any) -> None:
    response = world.client("owner").post("/api/cohorts/", {"name": ""}, format="json")
    assert response.status_code == 400
    error_shape(response)
    body = response.json()
    assert body["code"] == "invalid_input"
    assert "name" in body["details"] and body["message"].startswith("name:")


def test_duplicate_cohort_name_is_409(world: Any, error_shape: Any) -> None:
    response = world.client("viewer").post("/api/cohorts/", {"name": "alpha"}, format="json")
    assert response.status_code == 409
    error_shape(response)


def test_unsupported_media_type_is_415(world: Any, error_shape: Any) -> None:
    response = world.client("owner").post("/api/cohorts/", "name=x", content_type="text/plain")
    assert response.status_code == 415
    error_shape(response)


def test_malformed_json_is_400(world: Any, error_shape: Any) -> None:
    response = world.client("owner").post("/api/cohorts/", "{nope",
                                          content_type="application/json")  # fmt: skip
    assert response.status_code == 400
    error_shape(response)


def test_oversized_form_is_413(world: Any, settings: Any, error_shape: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = world.client("owner").post(
        f"/api/cohorts/{world.alpha.pk}/label-file",
        {"note": "x" * 5000, "file": SimpleUploadedFile("l.csv", b"filename,label\n")},
        format="multipart",
    )
    assert response.status_code == 413
    error_shape(response)


def test_malformed_annotations_store_nothing(world: Any, error_shape: Any) -> None:
    from slides.models import Annotation

    cmu = world.objects["cmu"]
    before = Annotation.objects.count()
    client = world.client("annotator")
    bowtie = [[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]
    bodies = [
        {"type": "Nonsense"},
        {"type": "FeatureCollection", "features": "no"},
        {"type": "FeatureCollection", "features": []},
        {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]},
             "properties": {}}]},
        {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [bowtie]},
             "properties": {}}]},
        ["not a feature"],
    ]  # fmt: skip
    for body in bodies:
        response = client.post(f"/api/slides/{cmu.pk}/annotations", body, format="json")
        assert response.status_code == 400, (body, response.content)
        error_shape(response)
        assert response.json()["code"] == "invalid_annotation"
    assert Annotation.objects.count() == before


def test_annotations_round_trip(world: Any) -> None:
    cmu = world.objects["cmu"]
    client = world.client("annotator")
    got = client.get(f"/api/slides/{cmu.pk}/annotations")
    assert got["Content-Type"] == "application/geo+json"
    collection = got.json()
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 1
    feature = collection["features"][0]
    assert feature["id"] == world.objects["annotation"].pk
    assert feature["properties"]["classification"]["name"] == "Tumor"
    posted = client.post(f"/api/slides/{cmu.pk}/annotations", collection, format="json")
    assert posted.status_code == 201 and posted.json()["contours"] == 1
    xml = client.get(f"/api/slides/{cmu.pk}/annotations.xml")
    assert xml.status_code == 200 and b"<ASAP_Annotations>" in xml.content
    assert xml.content.count(b"<Annotation ") == 2


def test_a_trained_case_keeps_its_split(world: Any, error_shape: Any) -> None:
    from slides.models import Slide

    tumor = Slide.objects.get(cohort=world.alpha, original_filename="synth_tumor.svs")
    response = world.client("manager").patch(f"/api/slides/{tumor.pk}/", {"split": "test"},
                                             format="json")  # fmt: skip
    assert response.status_code == 409
    error_shape(response)


def test_heatmap_parameters_are_validated(world: Any, error_shape: Any) -> None:
    client = world.client("viewer")
    heatmap = world.objects["heatmap"].pk
    for query in ("colormap=no-such-map", "vmin=2", "vmin=0.8&vmax=0.2", "threshold=-1",
                  "opacity=abc"):  # fmt: skip
        response = client.get(f"/api/heatmaps/{heatmap}/overlay.png?{query}")
        assert response.status_code == 400, query
        error_shape(response)
    assert client.get(f"/api/heatmaps/{heatmap}/contours.geojson?threshold=7").status_code == 400


def test_heatmap_outputs(world: Any) -> None:
    import io

    from PIL import Image

    client = world.client("viewer")
    heatmap = world.objects["heatmap"]
    meta = client.get(f"/api/heatmaps/{heatmap.pk}/").json()
    assert (meta["rows"], meta["cols"], meta["l0_cell_size"]) == (24, 18, 128.0)
    assert meta["provenance"]["checkpoint"] == "best.pt"  # no server path
    png = Image.open(io.BytesIO(client.get(f"/api/heatmaps/{heatmap.pk}/overlay.png").content))
    assert png.size == (18, 24) and png.mode == "RGBA"
    contours = client.get(f"/api/heatmaps/{heatmap.pk}/contours.geojson?threshold=0.9").json()
    assert contours["type"] == "FeatureCollection" and contours["features"]
    assert contours["features"][0]["properties"]["threshold"] == 230  # ceil(0.9 * 255)
    raw = client.get(f"/api/heatmaps/{heatmap.pk}/raw")
    assert b"".join(raw.streaming_content)[:2] == b"PK"
    tiff = client.get(f"/api/heatmaps/{heatmap.pk}/tiff")
    assert tiff.content[:2] in (b"II", b"MM")


def test_evaluations_match_the_service_form(world: Any) -> None:
    from evaluation.services import evaluation_as_dict

    evaluation = world.objects["evaluation"]
    body = world.client("viewer").get(f"/api/evaluations/?run={evaluation.run_id}").json()
    (row,) = body["results"]
    expected = evaluation_as_dict(evaluation)
    assert {k: row[k] for k in expected} == expected


def test_reports(world: Any, error_shape: Any) -> None:
    client = world.client("viewer")
    report = client.get(f"/api/reports/?cohort={world.alpha.pk}").json()
    assert report["split"] == "test" and len(report["rows"]) == 3
    assert report["grids"]["in_distribution.auc_tissue"] == [
        {"alpha": 0.2, "beta": 0.0, "value": 0.9}
    ]
    csv = client.get(f"/api/reports/csv?sweep={world.objects['sweep'].pk}")
    assert csv["Content-Type"].startswith("text/csv")
    assert csv.content.decode().splitlines()[0].startswith("run,alpha,beta")
    grid = client.get(f"/api/reports/grid.png?cohort={world.alpha.pk}")
    assert grid.content[:8] == b"\x89PNG\r\n\x1a\n"
    missing = client.get("/api/reports/")
    assert missing.status_code == 400
    error_shape(missing)


def test_run_create_refuses_server_paths_and_bad_settings(world: Any, error_shape: Any) -> None:
    client = world.client("manager")
    for settings in ({"pretrained": "/etc/passwd"}, {"epochs": 0}, {"no_such_key": 1}):
        body = {"cohort": world.alpha.pk, "alpha": 0.2, "beta": 0.0, "settings": settings}
        response = client.post("/api/runs/", body, format="json")
        assert response.status_code == 400, settings
        error_shape(response)
        assert response.json()["code"] == "invalid_configuration"
    bad_grid = client.post("/api/sweeps/", {"cohort": world.alpha.pk, "grid": [[0.2]]},
                           format="json")  # fmt: skip
    assert bad_grid.status_code == 400


def test_run_create_queues_on_commit(world: Any, django_capture_on_commit_callbacks: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from training.services import runs as run_services

    sent: list[tuple[str, list[int]]] = []

    class _Result:
        id = "task-1"

    def send_task(name: str, args: list[int], queue: str) -> _Result:
        sent.append((name, args))
        return _Result()

    monkeypatch.setattr(run_services.celery_app, "send_task", send_task)
    client = world.client("manager")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/runs/", {"cohort": world.alpha.pk, "alpha": 0.4,
                                              "beta": 0.2, "settings": {"epochs": 2}},
                               format="json")  # fmt: skip
    assert response.status_code == 201
    assert sent == [(run_services.TRAIN_TASK, [response.json()["id"]])]


def test_unexpected_errors_are_500_in_the_error_shape(
    world: Any, monkeypatch: pytest.MonkeyPatch, error_shape: Any
) -> None:
    from slides import apis

    def explode(**kwargs: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(apis.selectors, "slide_get", explode)
    response = world.client("viewer").get(f"/api/slides/{world.objects['cmu'].pk}/")
    assert response.status_code == 500
    error_shape(response)
    assert "secret" not in response.content.decode()


def test_foreign_errors_keep_their_code(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from slides import apis

    def unreadable(**kwargs: Any) -> None:
        raise SlideUnreadableError("cannot read slide 'x'")

    monkeypatch.setattr(apis, "slide_dzi", unreadable)
    response = world.client("viewer").get(f"/api/slides/{world.objects['cmu'].pk}.dzi")
    assert response.status_code == 422 and response.json()["code"] == "slide_unreadable"
