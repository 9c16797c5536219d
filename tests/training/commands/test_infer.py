"""`manage.py infer`: maps of a trained run, read with threads or with worker processes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from training.mil.export import load_map_npz

pytestmark = pytest.mark.django_db
TINY = [
    "--arch", "resnet18", "--patch-size", "32", "--target-mpp", "2.0", "--patches-per-slide", "6",
    "--pretrained", "none", "--num-workers", "0", "--device", "cpu",
]  # fmt: skip


def call(*args: str) -> dict:  # type: ignore[type-arg]
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def stored_maps(result: dict) -> dict[int, np.ndarray]:  # type: ignore[type-arg]
    root = Path(settings.ARTIFACTS_DIR)
    maps = {}
    for entry in result["maps"]:
        path = Path(entry["map"])
        slide_map, _meta = load_map_npz(path if path.is_absolute() else root / path)
        maps[entry["slide_id"]] = slide_map.probs
    return maps


def test_reader_processes_give_the_same_maps(tiny_cohort) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    run = call("train", "--cohort", "tiny", "--alpha", "0.2", "--beta", "0", "--epochs", "1",
               *TINY, "--json")  # fmt: skip
    run_id = str(run["run_id"])
    threads = stored_maps(call("infer", "--run", run_id, "--device", "cpu", "--json"))
    processes = stored_maps(
        call("infer", "--run", run_id, "--device", "cpu", "--reader-processes", "2", "--json")
    )
    assert len(threads) == 2 and threads.keys() == processes.keys()
    for slide_id, probs in threads.items():
        np.testing.assert_array_equal(processes[slide_id], probs)
    # The setting is the default; a negative count is refused before anything is read.
    with override_settings(TUMORMAP_INFER_READER_PROCESSES=2):
        from_setting = stored_maps(call("infer", "--run", run_id, "--device", "cpu", "--json"))
    for slide_id, probs in threads.items():
        np.testing.assert_array_equal(from_setting[slide_id], probs)
    with pytest.raises(CommandError, match="reader_processes"):
        call("infer", "--run", run_id, "--device", "cpu", "--reader-processes", "-1", "--json")
