from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from slides.models import Slide
from training.models import RunStatus, TrainingRun

pytestmark = pytest.mark.django_db
TINY = [
    "--arch", "resnet18", "--patch-size", "32", "--target-mpp", "2.0", "--patches-per-slide", "6",
    "--pretrained", "none", "--num-workers", "0", "--device", "cpu",
]  # fmt: skip


def train(*args: str) -> tuple[dict, str]:  # type: ignore[type-arg]
    out, err = io.StringIO(), io.StringIO()
    call_command("train", *args, stdout=out, stderr=err)
    return json.loads(out.getvalue()), err.getvalue()


def test_train_json_records_the_run(tiny_cohort, capfd) -> None:  # type: ignore[no-untyped-def]
    result, err = train("--cohort", "tiny", "--alpha", "0.2", "--beta", "0.2", "--epochs", "2",
                        *TINY, "--json")  # fmt: skip
    run = TrainingRun.objects.get(pk=result["run_id"])
    assert result["status"] == run.status == RunStatus.SUCCEEDED
    assert run.epochs_completed == 2 and len(run.history) == 2
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert {"train_loss", "val_loss"} <= set(run.history[-1])
    assert run.progress["epoch"] == 2 and run.progress["fraction"] == 1.0
    assert Path(run.best_checkpoint_path).is_file() and Path(run.checkpoint_path).is_file()
    assert run.config["alpha"] == 0.2 and run.config["arch"] == "resnet18"
    assert run.code_version and run.started_at and run.finished_at
    assert set(run.normalisation) == {"mean", "std"}
    assert "Run " in err
    assert "epoch 2/2 step 4/4" in capfd.readouterr().err  # the progress bar is on stderr


def test_train_refuses_invalid_configuration_and_untrainable_cohort(tiny_cohort) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandError, match="alpha"):
        train("--cohort", "tiny", "--alpha", "0.8", "--beta", "0.4", *TINY)
    with pytest.raises(CommandError, match="No cohort"):
        train("--cohort", "nope", "--alpha", "0.2", "--beta", "0")
    Slide.objects.filter(cohort=tiny_cohort, split="train", label="normal").update(split="test")
    with pytest.raises(CommandError, match="tumor slide and one ready normal"):
        train("--cohort", "tiny", "--alpha", "0.2", "--beta", "0", *TINY)
    assert not TrainingRun.objects.exists()
