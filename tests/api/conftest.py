"""Fixtures of the API tests: two cohorts with real slides, contours, runs, maps, evaluations,
and one user per role, each with an API token.

Cohort "alpha" holds the real Aperio region (cmu-1-small-region.svs, test split) and two small
synthetic slides (one tumor, one normal, train split), so it can train. Cohort "beta" belongs to
someone else: its objects must never be visible to alpha's members, and alpha's to beta's owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

ROLES = ("anonymous", "outsider", "viewer", "annotator", "manager", "owner")
CMU = "cmu-1-small-region.svs"
SQUARE = {
    "type": "Feature",
    "geometry": {
        "type": "Polygon",
        "coordinates": [[[100.0, 100.0], [600.0, 100.0], [600.0, 500.0], [100.0, 500.0],
                         [100.0, 100.0]]],
    },
    "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
}  # fmt: skip


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Two small synthetic Aperio slides (tumor, normal) and a link to the real region."""
    from slides.wsi.synthetic import generate_slide

    folder = tmp_path_factory.mktemp("api-slides")
    generate_slide(folder / "synth_tumor.svs", seed=1, tumor=True, width=1024, height=768,
                   case_id="SYN-0001")  # fmt: skip
    generate_slide(folder / "synth_normal.svs", seed=2, tumor=False, width=1024, height=768,
                   case_id="SYN-0002")  # fmt: skip
    (folder / CMU).symlink_to(shared_data / "slides" / CMU)
    return folder


@dataclass
class World:
    users: dict[str, Any]
    tokens: dict[str, str]
    alpha: Any
    beta: Any
    # Ids of alpha's and beta's objects, per kind: {"slide": [...], "run": [...], ...}
    ids: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=dict)

    def client(self, role: str) -> APIClient:
        client = APIClient()
        if role != "anonymous":
            client.credentials(HTTP_AUTHORIZATION=f"Token {self.tokens[role]}")
        return client


def _heatmap(run: Any, slide: Any) -> Any:
    from training.mil.export import save_map_npz
    from training.mil.maps import SlideMap
    from training.models import HeatMap

    rows, cols = 24, 18
    rng = np.random.default_rng(run.pk)
    probs = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
    probs[4:12, 4:10] = 250  # one clear tumor region
    valid = np.ones((rows, cols), dtype=bool)
    valid[0, :] = False
    slide_map = SlideMap(
        probs=probs, valid=valid, l0_origin=(0.0, 0.0), l0_cell_size=128.0, patch_size=224,
        target_mpp=0.5, m_cells_per_patch=(7, 7), l0_slide_size=(slide.width, slide.height),
        slide_mpp=slide.mpp,
    )  # fmt: skip
    relative = Path("maps") / f"run{run.pk}" / f"{slide.pk}.npz"
    save_map_npz(slide_map, Path(settings.ARTIFACTS_DIR) / relative,
                 provenance={"run": run.pk, "checkpoint": "/srv/secret/best.pt"})  # fmt: skip
    return HeatMap.objects.create(
        run=run, slide=slide, epoch=1, map_path=str(relative), rows=rows, cols=cols,
        l0_cell_size=128.0, tissue_cells=int(valid.sum()),
        provenance={"run": run.pk, "checkpoint": "/srv/secret/best.pt"},
    )  # fmt: skip


def _runs(cohort: Any, owner: Any, slide: Any) -> dict[str, Any]:
    from evaluation.models import Evaluation
    from training.mil.config import RunConfig
    from training.models import RunStatus, Sweep, TrainingRun

    config = RunConfig(alpha=0.2, beta=0.0, epochs=1).to_dict()
    sweep = Sweep.objects.create(cohort=cohort, grid=[[0.2, 0.0]], created_by=owner)
    succeeded = TrainingRun.objects.create(
        cohort=cohort, sweep=sweep, config=config, alpha=0.2, beta=0.0,
        status=RunStatus.SUCCEEDED, progress={"epoch": 1, "epochs": 1, "fraction": 1.0},
        history=[{"epoch": 1, "train_loss": 0.5}], log_tail="done",
    )  # fmt: skip
    queued = TrainingRun.objects.create(
        cohort=cohort, config=config, alpha=0.4, beta=0.2, status=RunStatus.QUEUED
    )
    failed = TrainingRun.objects.create(
        cohort=cohort, config=config, alpha=0.6, beta=0.2, status=RunStatus.FAILED, error="boom"
    )
    heatmap = _heatmap(succeeded, slide)
    evaluation = Evaluation.objects.create(
        run=succeeded, split="test", auc_tissue=0.9, auc_all=0.95, threshold=128,
        threshold_source="test maps", n_slides=1, n_pixels=400,
        details={"in_distribution": {"auc_tissue": 0.9, "auc_all": 0.95, "n_slides": 1},
                 "out_of_location": {"auc_tissue": None, "auc_all": None, "n_slides": 0},
                 "per_location": {}, "missing_contours": []},
    )  # fmt: skip
    return {"sweep": sweep, "run": succeeded, "queued_run": queued, "failed_run": failed,
            "heatmap": heatmap, "evaluation": evaluation}  # fmt: skip


@pytest.fixture
def world(db: None, synthetic_dir: Path, shared_data: Path, settings: Any, tmp_path: Path) -> World:
    return build_world(synthetic_dir, shared_data, settings, tmp_path)


def build_world(synthetic_dir: Path, shared_data: Path, settings: Any, tmp_path: Path) -> World:
    from slides.models import Annotation, Membership, Slide, Upload
    from slides.services import cohort_create, cohort_import, slide_compute_tissue
    from slides.services.members import annotations_create
    from slides.services.uploads import upload_create
    from slides.wsi.label_files import LabelRow

    settings.SLIDES_DIR = tmp_path / "slides"
    settings.TUMORMAP_UPLOAD_DIR = tmp_path / "uploads"
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"

    User = get_user_model()
    users = {
        role: User.objects.create_user(role, password=f"pw-{role}-123")
        for role in ROLES
        if role != "anonymous"
    }
    User.objects.create_user("newbie", password="pw-newbie-123")
    tokens = {role: Token.objects.create(user=user).key for role, user in users.items()}

    alpha = cohort_create(name="alpha", owner=users["owner"])
    for role in ("viewer", "annotator", "manager"):
        Membership.objects.create(cohort=alpha, user=users[role], role=role)
    labels = [
        LabelRow("synth_tumor.svs", "tumor", "SYN-0001", "skin", "train"),
        LabelRow("synth_normal.svs", "normal", "SYN-0002", "skin", "train"),
        LabelRow(CMU, "tumor", "CMU-1", "skin", "test"),
    ]
    cohort_import(cohort=alpha, path=synthetic_dir, labels=labels)
    cmu = Slide.objects.get(cohort=alpha, original_filename=CMU)
    slide_compute_tissue(slide=cmu)
    annotations_create(slide=cmu, geojson=SQUARE, user=users["owner"])

    # Beta: the outsider's own cohort, with the same kinds of objects.
    beta = cohort_create(name="beta", owner=users["outsider"])
    cohort_import(cohort=beta, path=shared_data / "slides" / CMU,
                  labels=[LabelRow(CMU, "tumor", "CMU-B", "skin", "test")])  # fmt: skip
    beta_slide = Slide.objects.get(cohort=beta)
    annotations_create(slide=beta_slide, geojson=SQUARE, user=users["outsider"])

    w = World(users=users, tokens=tokens, alpha=alpha, beta=beta)
    alpha_runs = _runs(alpha, users["owner"], cmu)
    beta_runs = _runs(beta, users["outsider"], beta_slide)
    upload = upload_create(cohort=alpha, filename="new-slide.svs", size=10, md5="0" * 32,
                           user=users["owner"])  # fmt: skip
    beta_upload = upload_create(cohort=beta, filename="b.svs", size=10, md5="0" * 32,
                                user=users["outsider"])  # fmt: skip
    w.objects = {
        "cmu": cmu,
        "annotation": Annotation.objects.filter(slide=cmu).first(),
        "upload": upload,
        **alpha_runs,
        "beta_slide": beta_slide,
        "beta_annotation": Annotation.objects.filter(slide=beta_slide).first(),
        "beta_upload": beta_upload,
        **{f"beta_{k}": v for k, v in beta_runs.items()},
    }
    for name, cohort in (("alpha", alpha), ("beta", beta)):
        w.ids[name] = {
            "cohort": [cohort.pk],
            "slide": list(Slide.objects.filter(cohort=cohort).values_list("pk", flat=True)),
            "case": list(cohort.cases.values_list("pk", flat=True)),
            "run": list(cohort.runs.values_list("pk", flat=True)),
            "sweep": list(cohort.sweeps.values_list("pk", flat=True)),
            "heatmap": [h.pk for r in cohort.runs.all() for h in r.heatmaps.all()],
            "evaluation": [e.pk for r in cohort.runs.all() for e in r.evaluations.all()],
            "upload": list(Upload.objects.filter(cohort=cohort).values_list("pk", flat=True)),
        }
    return w


def assert_error_shape(response: Any) -> None:
    """An error response is JSON {"code", "message", "details"}, whatever the endpoint."""
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"code", "message", "details"}, body
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], dict)


@pytest.fixture
def error_shape() -> Any:
    return assert_error_shape


@pytest.fixture
def live_world(
    transactional_db: None, synthetic_dir: Path, shared_data: Path, settings: Any, tmp_path: Path
) -> World:
    """The same world, committed, for tests against a live server thread."""
    return build_world(synthetic_dir, shared_data, settings, tmp_path)
