from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from slides.models import Cohort, Slide

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_import_cohort_json_is_one_object(admin_user_, real_slides_dir: Path) -> None:
    out, err = run("import_cohort", str(real_slides_dir), "--name", "real", "--json")
    report = json.loads(out)  # the whole of stdout is one JSON object
    assert report["cohort"] == "real"
    assert report["slides"] == 4
    assert report["labels"] == {"tumor": 1, "normal": 0, "unknown": 3}
    assert sum(report["splits"].values()) == 4
    assert {e["file"] for e in report["errors"]} == {"broken.svs", "notes.svs"}
    assert "broken.svs" in err and "notes.svs" in err
    assert "tcga-cr-7395-01a-01-ts1.svs" in err  # the assumed-resolution warning
    assert Cohort.objects.get(name="real").owner == admin_user_


def test_import_cohort_manifest_and_split_command(
    admin_user_, shared_data: Path, tmp_path: Path
) -> None:
    manifest = shared_data / "manifests" / "gdc_manifest_tcga_frozen_breast_kidney_lung.txt"
    small = tmp_path / "manifest.txt"
    small.write_text("".join(manifest.read_text().splitlines(keepends=True)[:201]))
    out, _ = run(
        "import_cohort",
        "--name",
        "tcga",
        "--manifest",
        str(small),
        "--location",
        "breast",
        "--json",
    )
    report = json.loads(out)
    assert report["slides"] == 200 and report["states"]["awaiting_file"] == 200
    assert set(Slide.objects.values_list("location", flat=True)) == {"breast"}
    out, _ = run("split_cohort", "tcga", "--seed", "4", "--json")
    result = json.loads(out)
    assert sum(result["slides"].values()) == 200
    assert result["cases"]["train"] > result["cases"]["test"] > 0


def test_import_cohort_refuses_bad_input_cleanly(admin_user_, tmp_path: Path) -> None:
    bad_labels = tmp_path / "labels.csv"
    bad_labels.write_text("filename,label\na.svs,perhaps\n")
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(CommandError, match="perhaps"):
        run("import_cohort", str(folder), "--name", "x", "--labels", str(bad_labels))
    assert not Cohort.objects.filter(name="x").exists()  # nothing half-registered
    with pytest.raises(CommandError, match="does not exist"):
        run("import_cohort", str(tmp_path / "nowhere"), "--name", "x")
    with pytest.raises(CommandError, match="PATH"):
        run("import_cohort", "--name", "x")
    with pytest.raises(CommandError, match="No cohort"):
        run("split_cohort", "nope")


def test_import_cohort_needs_an_owner(db, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="owner"):
        run("import_cohort", str(tmp_path), "--name", "orphan")


def test_make_demo_cohort_then_import(admin_user_, tmp_path: Path) -> None:
    out, _ = run("make_demo_cohort", str(tmp_path / "demo"), "--slides", "4", "--width", "1024",
                 "--height", "768", "--json")  # fmt: skip
    summary = json.loads(out)
    assert [s["label"] for s in summary["slides"]].count("tumor") == 2
    folder = tmp_path / "demo"
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    assert {r["filename"] for r in rows} == {s["file"] for s in summary["slides"]}
    assert all(
        (folder / f"{r['filename']}.geojson").is_file() for r in rows if r["label"] == "tumor"
    )
    out, _ = run(
        "import_cohort",
        str(folder),
        "--name",
        "demo",
        "--labels",
        str(folder / "labels.csv"),
        "--json",
    )
    report = json.loads(out)
    assert report["slides"] == 4 and report["states"]["ready"] == 4
    assert report["labels"] == {"tumor": 2, "normal": 2, "unknown": 0}
    assert report["errors"] == []
    assert report["cases"] == 2  # a tumor and a normal slide per demo case


def test_setup_demo_builds_cohort_once(db) -> None:
    from django.contrib.auth import authenticate

    out, _ = run("setup_demo", "--slides", "4")
    assert "demo / demo-tumormap" in out
    assert authenticate(username="demo", password="demo-tumormap") is not None
    cohort = Cohort.objects.get(name="Demo cohort")
    slides = Slide.objects.filter(cohort=cohort)
    assert slides.count() == 4 and all(s.state == "ready" for s in slides)
    assert all(s.thumbnail and s.tissue_mask for s in slides)
    tumor = slides.filter(label="tumor")
    assert tumor.count() == 2 and all(s.annotations.filter(label="tumor").exists() for s in tumor)
    from training.models import TrainingRun

    runs = TrainingRun.objects.filter(cohort=cohort, sweep__name="Demo sweep")
    assert sorted(runs.values_list("alpha", "beta")) == [(0.2, 0.0), (0.4, 0.0)]
    assert set(runs.values_list("status", flat=True)) == {"queued"}
    out, _ = run("setup_demo", "--slides", "4")
    assert "exists already" in out and Slide.objects.count() == 4
    assert TrainingRun.objects.count() == 2
