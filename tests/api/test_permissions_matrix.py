"""Every endpoint x every role: the expected status, errors in the error shape, and lists that
never show another cohort's objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction

ANON_STATUSES = {401, 403}


def _signed(ok: int) -> dict[str, int]:
    """Any signed-in user: the outsider too (lists show only their own cohorts)."""
    return {"outsider": ok, "viewer": ok, "annotator": ok, "manager": ok, "owner": ok}


def _at_least(minimum: str, ok: int) -> dict[str, int]:
    order = ["viewer", "annotator", "manager", "owner"]
    expected = {"outsider": 404}
    for role in order:
        expected[role] = ok if order.index(role) >= order.index(minimum) else 403
    return expected


LIST = _signed(200)
READ = _at_least("viewer", 200)


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: Callable[[Any], str]
    expected: dict[str, int]
    body: Callable[[Any], dict[str, Any]] | None = None
    # For lists: the kind of object listed, checked against the other cohort's ids.
    kind: str | None = None


def _o(name: str) -> Callable[[Any], int]:
    return lambda w: w.objects[name].pk


def _label_csv(w: Any) -> dict[str, Any]:
    data = b"filename,label\ncmu-1-small-region.svs,tumor\n"
    return {"format": "multipart", "data": {"file": SimpleUploadedFile("labels.csv", data)}}


def _chunk(w: Any) -> dict[str, Any]:
    return {"raw": b"01234", "headers": {"HTTP_CONTENT_RANGE": "bytes 0-4/10"}}


def _json(data: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    return lambda w: {"format": "json", "data": data(w)}


ENDPOINTS = [
    Endpoint("me", "get", lambda w: "/api/me/", LIST),
    Endpoint("cohorts list", "get", lambda w: "/api/cohorts/", LIST, kind="cohort"),
    Endpoint("cohorts create", "post", lambda w: "/api/cohorts/", _signed(201),
             _json(lambda w: {"name": "gamma"})),
    Endpoint("cohort get", "get", lambda w: f"/api/cohorts/{w.alpha.pk}/", READ),
    Endpoint("cohort patch", "patch", lambda w: f"/api/cohorts/{w.alpha.pk}/",
             _at_least("manager", 200), _json(lambda w: {"description": "d", "default_mpp": 0.5})),
    Endpoint("cohort delete", "delete", lambda w: f"/api/cohorts/{w.alpha.pk}/",
             _at_least("owner", 204)),
    Endpoint("members list", "get", lambda w: f"/api/cohorts/{w.alpha.pk}/members/", READ),
    Endpoint("members add", "post", lambda w: f"/api/cohorts/{w.alpha.pk}/members/",
             _at_least("manager", 201), _json(lambda w: {"username": "newbie", "role": "viewer"})),
    Endpoint("member role", "patch",
             lambda w: f"/api/cohorts/{w.alpha.pk}/members/{w.users['viewer'].pk}/",
             _at_least("manager", 200), _json(lambda w: {"role": "annotator"})),
    Endpoint("member remove", "delete",
             lambda w: f"/api/cohorts/{w.alpha.pk}/members/{w.users['annotator'].pk}/",
             _at_least("manager", 204)),
    Endpoint("owner cannot be removed", "delete",
             lambda w: f"/api/cohorts/{w.alpha.pk}/members/{w.users['owner'].pk}/",
             _at_least("manager", 409)),
    Endpoint("uploads list", "get", lambda w: f"/api/cohorts/{w.alpha.pk}/uploads",
             _at_least("manager", 200)),
    Endpoint("upload create", "post", lambda w: f"/api/cohorts/{w.alpha.pk}/uploads",
             _at_least("manager", 201),
             _json(lambda w: {"filename": "x.svs", "size": 100, "md5": "a" * 32})),
    Endpoint("upload offset", "get", lambda w: f"/api/uploads/{w.objects['upload'].pk}",
             _at_least("manager", 200)),
    Endpoint("upload chunk", "put", lambda w: f"/api/uploads/{w.objects['upload'].pk}",
             _at_least("manager", 200), _chunk),
    Endpoint("upload abort", "delete", lambda w: f"/api/uploads/{w.objects['upload'].pk}",
             _at_least("manager", 204)),
    Endpoint("label file", "post", lambda w: f"/api/cohorts/{w.alpha.pk}/label-file",
             _at_least("manager", 200), _label_csv),
    Endpoint("cases list", "get", lambda w: "/api/cases/", LIST, kind="case"),
    Endpoint("slides list", "get", lambda w: "/api/slides/", LIST, kind="slide"),
    Endpoint("slides filtered", "get", lambda w: f"/api/slides/?cohort={w.alpha.pk}&label=tumor"
             "&split=test&location=skin&state=ready", LIST, kind="slide"),
    Endpoint("slide get", "get", lambda w: f"/api/slides/{w.objects['cmu'].pk}/", READ),
    Endpoint("slide patch", "patch", lambda w: f"/api/slides/{w.objects['cmu'].pk}/",
             _at_least("manager", 200),
             _json(lambda w: {"label": "normal", "location": "lung", "split": "val"})),
    Endpoint("thumbnail", "get", lambda w: f"/api/slides/{w.objects['cmu'].pk}/thumbnail", READ),
    Endpoint("tissue mask", "get", lambda w: f"/api/slides/{w.objects['cmu'].pk}/tissue-mask",
             READ),
    Endpoint("associated", "get",
             lambda w: f"/api/slides/{w.objects['cmu'].pk}/associated/label", READ),
    Endpoint("dzi", "get", lambda w: f"/api/slides/{w.objects['cmu'].pk}.dzi", READ),
    Endpoint("tile", "get", lambda w: f"/api/slides/{w.objects['cmu'].pk}_files/12/0_0.jpeg",
             READ),
    Endpoint("annotations get", "get",
             lambda w: f"/api/slides/{w.objects['cmu'].pk}/annotations", READ),
    Endpoint("annotations post", "post",
             lambda w: f"/api/slides/{w.objects['cmu'].pk}/annotations",
             _at_least("annotator", 201),
             _json(lambda w: {"type": "FeatureCollection", "features": [_square()]})),
    Endpoint("annotations xml", "get",
             lambda w: f"/api/slides/{w.objects['cmu'].pk}/annotations.xml", READ),
    Endpoint("annotation delete", "delete",
             lambda w: f"/api/annotations/{w.objects['annotation'].pk}",
             _at_least("annotator", 204)),
    Endpoint("sweeps list", "get", lambda w: "/api/sweeps/", LIST, kind="sweep"),
    Endpoint("sweep create", "post", lambda w: "/api/sweeps/", _at_least("manager", 201),
             _json(lambda w: {"cohort": w.alpha.pk, "grid": [[0.2, 0.0], [0.4, 0.2]],
                              "settings": {"epochs": 1}})),
    Endpoint("sweep get", "get", lambda w: f"/api/sweeps/{w.objects['sweep'].pk}/", READ),
    Endpoint("runs list", "get", lambda w: "/api/runs/?status=succeeded", LIST, kind="run"),
    Endpoint("run create", "post", lambda w: "/api/runs/", _at_least("manager", 201),
             _json(lambda w: {"cohort": w.alpha.pk, "alpha": 0.2, "beta": 0.0,
                              "settings": {"epochs": 1}})),
    Endpoint("run get", "get", lambda w: f"/api/runs/{w.objects['run'].pk}/", READ),
    Endpoint("run cancel", "post", lambda w: f"/api/runs/{w.objects['queued_run'].pk}/cancel",
             _at_least("manager", 200)),
    Endpoint("run retry", "post", lambda w: f"/api/runs/{w.objects['failed_run'].pk}/retry",
             _at_least("manager", 200)),
    Endpoint("heatmaps list", "get", lambda w: "/api/heatmaps/", LIST, kind="heatmap"),
    Endpoint("heatmap get", "get", lambda w: f"/api/heatmaps/{w.objects['heatmap'].pk}/", READ),
    Endpoint("heatmap overlay", "get",
             lambda w: f"/api/heatmaps/{w.objects['heatmap'].pk}/overlay.png?threshold=0.5",
             READ),
    Endpoint("heatmap raw", "get", lambda w: f"/api/heatmaps/{w.objects['heatmap'].pk}/raw",
             READ),
    Endpoint("heatmap tiff", "get", lambda w: f"/api/heatmaps/{w.objects['heatmap'].pk}/tiff",
             READ),
    Endpoint("heatmap contours", "get",
             lambda w: f"/api/heatmaps/{w.objects['heatmap'].pk}/contours.geojson?threshold=0.9",
             READ),
    Endpoint("evaluations list", "get", lambda w: "/api/evaluations/", LIST, kind="evaluation"),
    Endpoint("report", "get", lambda w: f"/api/reports/?cohort={w.alpha.pk}", READ),
    Endpoint("report by sweep", "get",
             lambda w: f"/api/reports/?sweep={w.objects['sweep'].pk}&split=test", READ),
    Endpoint("report csv", "get", lambda w: f"/api/reports/csv?cohort={w.alpha.pk}", READ),
    Endpoint("report grid", "get", lambda w: f"/api/reports/grid.png?cohort={w.alpha.pk}", READ),
]  # fmt: skip


def _square() -> dict[str, Any]:
    ring = [[10.0, 10.0], [90.0, 10.0], [90.0, 90.0], [10.0, 90.0], [10.0, 10.0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"classification": {"name": "Tumor"}}}  # fmt: skip


def _call(world: Any, role: str, endpoint: Endpoint) -> Any:
    """One request, inside a savepoint that is rolled back: each role meets the same state."""
    client = world.client(role)
    path = endpoint.path(world)
    spec = endpoint.body(world) if endpoint.body else {}
    method = getattr(client, endpoint.method)
    with transaction.atomic():
        if "raw" in spec:
            response = method(path, spec["raw"], content_type="application/octet-stream",
                              **spec["headers"])  # fmt: skip
        elif spec:
            response = method(path, spec["data"], format=spec["format"])
        else:
            response = method(path)
        transaction.set_rollback(True)
    return response


def _listed_ids(response: Any) -> set[int]:
    body = response.json()
    assert set(body) >= {"count", "results"}, body
    return {item["id"] for item in body["results"]}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_endpoint_by_role(world: Any, endpoint: Endpoint, error_shape: Any) -> None:
    problems = []
    for role in ("anonymous", "outsider", "viewer", "annotator", "manager", "owner"):
        response = _call(world, role, endpoint)
        allowed = ANON_STATUSES if role == "anonymous" else {endpoint.expected[role]}
        if response.status_code not in allowed:
            detail = response.content[:300]
            problems.append(f"{role}: {response.status_code} (expected {allowed}) {detail!r}")
            continue
        if response.status_code >= 400:
            error_shape(response)
        if role == "anonymous":
            assert response.json()["code"] in ("not_authenticated", "authentication_failed")
        if endpoint.kind and response.status_code == 200:
            mine, theirs = ("beta", "alpha") if role == "outsider" else ("alpha", "beta")
            ids = _listed_ids(response)
            if role != "outsider" or "cohort=" not in endpoint.path(world):
                assert ids, f"{role} sees no {endpoint.kind} at all"
            assert ids <= set(world.ids[mine][endpoint.kind]), (role, ids)
            assert not ids & set(world.ids[theirs][endpoint.kind]), (role, ids)
    assert not problems, "\n".join(problems)


OTHER_COHORT_PATHS = [
    lambda w: f"/api/cohorts/{w.beta.pk}/",
    lambda w: f"/api/cohorts/{w.beta.pk}/members/",
    lambda w: f"/api/cohorts/{w.beta.pk}/uploads",
    lambda w: f"/api/uploads/{w.objects['beta_upload'].pk}",
    lambda w: f"/api/slides/{w.objects['beta_slide'].pk}/",
    lambda w: f"/api/slides/{w.objects['beta_slide'].pk}/thumbnail",
    lambda w: f"/api/slides/{w.objects['beta_slide'].pk}.dzi",
    lambda w: f"/api/slides/{w.objects['beta_slide'].pk}_files/12/0_0.jpeg",
    lambda w: f"/api/slides/{w.objects['beta_slide'].pk}/annotations",
    lambda w: f"/api/slides/{w.objects['beta_slide'].pk}/annotations.xml",
    lambda w: f"/api/sweeps/{w.objects['beta_sweep'].pk}/",
    lambda w: f"/api/runs/{w.objects['beta_run'].pk}/",
    lambda w: f"/api/heatmaps/{w.objects['beta_heatmap'].pk}/",
    lambda w: f"/api/heatmaps/{w.objects['beta_heatmap'].pk}/overlay.png",
    lambda w: f"/api/heatmaps/{w.objects['beta_heatmap'].pk}/raw",
    lambda w: f"/api/reports/?cohort={w.beta.pk}",
    lambda w: f"/api/reports/?sweep={w.objects['beta_sweep'].pk}",
]


@pytest.mark.parametrize("role", ["owner", "manager", "viewer"])
def test_other_cohorts_objects_are_not_found(world: Any, role: str, error_shape: Any) -> None:
    client = world.client(role)
    for path_of in OTHER_COHORT_PATHS:
        response = client.get(path_of(world))
        assert response.status_code == 404, (path_of(world), response.status_code)
        error_shape(response)
    writes = [
        ("delete", f"/api/annotations/{world.objects['beta_annotation'].pk}"),
        ("post", f"/api/runs/{world.objects['beta_queued_run'].pk}/cancel"),
        ("patch", f"/api/slides/{world.objects['beta_slide'].pk}/"),
        ("delete", f"/api/cohorts/{world.beta.pk}/"),
    ]
    for method, path in writes:
        response = getattr(client, method)(path)
        assert response.status_code == 404, (path, response.status_code)
    for body in ({"cohort": world.beta.pk, "alpha": 0.2, "beta": 0.0},):
        assert client.post("/api/runs/", body, format="json").status_code == 404
        assert client.post("/api/sweeps/", body, format="json").status_code == 404
    # Filtering by another cohort's id shows nothing rather than an error that would confirm
    # the cohort exists.
    response = client.get(f"/api/slides/?cohort={world.beta.pk}")
    assert response.status_code == 200 and response.json()["count"] == 0


def test_members_list_shows_owner_first(world: Any) -> None:
    body = world.client("viewer").get(f"/api/cohorts/{world.alpha.pk}/members/").json()
    roles = [(m["username"], m["role"]) for m in body["results"]]
    assert roles[0] == ("owner", "owner")
    assert set(roles[1:]) == {("annotator", "annotator"), ("manager", "manager"),
                              ("viewer", "viewer")}  # fmt: skip


def test_cohort_list_reports_role_and_slide_count(world: Any) -> None:
    for role in ("viewer", "manager", "owner"):
        body = world.client(role).get("/api/cohorts/").json()
        assert [(c["name"], c["role"], c["slide_count"]) for c in body["results"]] == [
            ("alpha", role, 3)
        ]
