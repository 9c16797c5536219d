"""The whole method through the commands: import a synthetic cohort, train from slide labels
only, infer whole-slide maps, score them against the contours."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from django.core.management import call_command

from slides.models import Slide

pytestmark = [pytest.mark.slow, pytest.mark.django_db]
# 12 slides of 6 cases: 4 cases train, 1 validation, 1 test (a tumor and a normal slide each).
SPLITS = ["train"] * 8 + ["val"] * 2 + ["test"] * 2


def call(*args: str) -> dict:  # type: ignore[type-arg]
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def test_train_infer_evaluate_reaches_auc_09(admin_user, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)  # faster than two on a 2-core machine shared with other work
    folder = tmp_path / "cohort"
    call_command("make_demo_cohort", str(folder), "--slides", "12", "--seed", "3",
                 "--width", "2048", "--height", "1536", stdout=io.StringIO())  # fmt: skip
    labels = (folder / "labels.csv").read_text().splitlines()
    with_splits = [labels[0] + ",split"] + [
        f"{row},{s}" for row, s in zip(labels[1:], SPLITS, strict=True)
    ]
    (folder / "labels.csv").write_text("\n".join(with_splits) + "\n")
    report = call("import_cohort", str(folder), "--name", "synthetic", "--labels",
                  str(folder / "labels.csv"), "--json")  # fmt: skip
    assert report["splits"] == {"train": 8, "val": 2, "test": 2, "unassigned": 0}
    contours = [str(p) for p in sorted(folder.glob("*.geojson"))]
    call("import_annotations", "--cohort", "synthetic", *contours, "--json")

    run = call("train", "--cohort", "synthetic", "--alpha", "0.2", "--beta", "0",
               "--epochs", "8", "--arch", "resnet18", "--patch-size", "64", "--target-mpp", "2.0",
               "--patches-per-slide", "32", "--pretrained", "none", "--num-workers", "0",
               "--device", "cpu", "--json")  # fmt: skip
    assert run["status"] == "succeeded" and run["epochs_completed"] == 8
    for split in ("val", "test"):
        maps = call("infer", "--run", str(run["run_id"]), "--split", split, "--device", "cpu",
                    "--json")  # fmt: skip
        assert len(maps["maps"]) == 2 and maps["skipped"] == []
    result = call("evaluate", "--run", str(run["run_id"]), "--split", "test", "--json")
    assert set(result) >= {"auc_tissue", "auc_all", "per_location", "threshold", "precision",
                           "recall", "f1", "dice", "n_slides", "n_pixels"}  # fmt: skip
    assert result["n_slides"] == 2 and result["missing_contours"] == []
    assert result["auc_tissue"] >= 0.9, result
    assert result["auc_all"] >= result["auc_tissue"] - 0.05  # glass is easy negative
    assert result["threshold_source"] == "validation maps"
    assert 0.0 < result["f1"] <= 1.0
    assert Slide.objects.filter(heatmaps__isnull=False).distinct().count() == 4

    out = tmp_path / "report"
    files = call("report", "--runs", str(run["run_id"]), "--out", str(out), "--json")
    assert Path(files["grid_png"]).is_file() and Path(files["curves_png"]).is_file()
    assert "0.2,0.0,succeeded" in (out / "report.csv").read_text()
