"""Storing a run's maps: files written while the next slide is inferred, rows after them."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from django.conf import settings
from django.core.management import call_command

from training.mil.batch_readers import ReaderProcessError
from training.mil.export import load_map_npz
from training.models import HeatMap, TrainingRun
from training.services import engine
from training.services.engine import heatmap_infer, heatmap_slides

pytestmark = pytest.mark.django_db
TINY = [
    "--arch", "resnet18", "--patch-size", "32", "--target-mpp", "2.0", "--patches-per-slide", "6",
    "--pretrained", "none", "--num-workers", "0", "--device", "cpu",
]  # fmt: skip


@pytest.fixture
def run(tiny_cohort: Any) -> TrainingRun:
    torch.set_num_threads(1)
    out = io.StringIO()
    call_command(
        "train", "--cohort", "tiny", "--alpha", "0.2", "--beta", "0", "--epochs", "1", *TINY,
        "--json", stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    return TrainingRun.objects.get(pk=json.loads(out.getvalue())["run_id"])


def _stored(heatmap: HeatMap) -> np.ndarray:
    root = Path(settings.ARTIFACTS_DIR)
    assert (root / heatmap.tiff_path).is_file()
    slide_map, _meta = load_map_npz(root / heatmap.map_path)
    return slide_map.probs


def test_a_slide_is_written_while_the_next_is_inferred(
    run: TrainingRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    slides = heatmap_slides(run, split="all", slide_ids=None)
    assert len(slides) >= 3
    second_started = threading.Event()
    infer_calls = 0
    write_threads: set[str] = set()
    real_infer, real_write = engine.infer_slide, engine._write_map_files

    def infer(*args: Any, **kwargs: Any) -> Any:
        nonlocal infer_calls
        infer_calls += 1
        if infer_calls == 2:
            second_started.set()
        return real_infer(*args, **kwargs)

    def write(folder: Path, slide: Any, *args: Any) -> Any:
        write_threads.add(threading.current_thread().name)
        if slide.pk == slides[0].pk:
            # Only returns if the next slide's inference starts meanwhile.
            assert second_started.wait(timeout=60), "the next slide waited for these files"
        return real_write(folder, slide, *args)

    monkeypatch.setattr(engine, "infer_slide", infer)
    monkeypatch.setattr(engine, "_write_map_files", write)
    heatmaps = heatmap_infer(run=run, slides=slides, device="cpu")

    assert [h.slide_id for h in heatmaps] == [s.pk for s in slides]
    assert HeatMap.objects.filter(run=run).count() == len(slides)
    assert all(name.startswith("tumormap-map-files") for name in write_threads)
    for heatmap in heatmaps:
        probs = _stored(heatmap)
        assert probs.shape == (heatmap.rows, heatmap.cols)
        assert heatmap.epoch == 1 and heatmap.provenance["run"] == run.pk


def test_maps_before_a_failing_slide_are_kept(
    run: TrainingRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    slides = heatmap_slides(run, split="all", slide_ids=None)
    real_infer = engine.infer_slide
    calls = 0

    def infer(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ReaderProcessError("a reader process stopped while reading the third slide")
        return real_infer(*args, **kwargs)

    monkeypatch.setattr(engine, "infer_slide", infer)
    with pytest.raises(ReaderProcessError, match="third slide"):
        heatmap_infer(run=run, slides=slides, device="cpu")
    # The first two maps, including the one still being written when the third failed.
    stored = HeatMap.objects.filter(run=run).order_by("slide_id")
    assert [h.slide_id for h in stored] == [s.pk for s in slides[:2]]
    for heatmap in stored:
        _stored(heatmap)


def test_a_map_whose_files_fail_gets_no_row(
    run: TrainingRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    slides = heatmap_slides(run, split="all", slide_ids=None)[:3]
    real_write = engine._write_map_files

    def write(folder: Path, slide: Any, *args: Any) -> Any:
        if slide.pk == slides[1].pk:
            raise OSError(28, "No space left on device")
        return real_write(folder, slide, *args)

    monkeypatch.setattr(engine, "_write_map_files", write)
    with pytest.raises(OSError, match="No space left"):
        heatmap_infer(run=run, slides=slides, device="cpu")
    stored = list(HeatMap.objects.filter(run=run))
    assert [h.slide_id for h in stored] == [slides[0].pk]
    _stored(stored[0])
