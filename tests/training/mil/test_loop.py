"""Training loop, evaluation and fit on CPU with fake slides (resumption: test_resume.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from common.errors import InvalidInputError
from training.mil.checkpoint import load_checkpoint
from training.mil.config import RunConfig
from training.mil.dataset import SlideBagDataset, SlideEntry
from training.mil.loop import (
    EpochInfo,
    FitResult,
    RunCancelled,
    StepInfo,
    TrainingDivergedError,
    _improves,
    evaluate,
    fit,
    make_loader,
    safe_auc,
    slide_score,
    train_one_epoch,
)
from training.mil.presets import IMAGENET_NORMALISATION

Configs = Callable[..., RunConfig]
Entries = Callable[..., list[SlideEntry]]
CPU = torch.device("cpu")


def run_fit(
    config: RunConfig,
    train: list[SlideEntry],
    val: list[SlideEntry],
    workdir: Path,
    factory: Any,
    **kwargs: Any,
) -> FitResult:
    return fit(config, train, val, workdir=workdir, device="cpu", sampler_factory=factory, **kwargs)


def test_loss_decreases_on_a_separable_dataset(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, truth_fn: Any, tmp_path: Path
) -> None:
    # The paper's lr; beta = 0 because with beta > 0 a from-scratch network that happens to
    # rank blobs lowest at first can settle in the inverted solution (R_beta labels the blobs 0).
    # This seed starts inverted (pixel AUC 0 after epoch 0) and must recover.
    config = tiny_config(epochs=6, lr=1e-4, beta=0.0, seed=2, deterministic=False)
    steps: list[StepInfo] = []
    epochs: list[EpochInfo] = []
    result = run_fit(
        config,
        fake_entries(3, 3),
        fake_entries(2, 2, prefix="val"),
        tmp_path,
        fake_factory(32),
        truth_fn=truth_fn,
        on_step=steps.append,
        on_epoch=epochs.append,
    )
    losses = [h["train_loss"] for h in result.history]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-2:]) < 0.85 * losses[0], losses
    # The model learned the blobs: slides and map cells are ranked well on held-out slides.
    final = result.history[-1]
    assert final["val_slide_auc"] == 1.0 and final["val_pixel_auc"] >= 0.9, final
    assert result.history[0]["val_pixel_auc"] < 0.5
    assert len(steps) == 6 * 6 and steps[-1] == StepInfo(
        5, 5, 6, steps[-1].loss, steps[-1].patches_per_s
    )
    assert [e.epoch for e in epochs] == list(range(6))
    assert epochs[0].improved and epochs[-1].checkpoint == tmp_path / "latest.pt"
    assert result.best_epoch is not None and result.best_checkpoint == tmp_path / "best.pt"
    assert result.best_metric == result.history[result.best_epoch]["val_slide_auc"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best.epoch == result.best_epoch + 1 and best.optimizer_state is None
    assert result.epochs_completed == 6 and len(result.history) == 6


def test_fit_without_validation_slides_and_without_training_slides(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, tmp_path: Path
) -> None:
    result = run_fit(tiny_config(epochs=2), fake_entries(1, 1), [], tmp_path, fake_factory(32))
    assert result.best_epoch == 0  # NaN metric: the first epoch stays the best
    assert "val_slide_auc" not in result.history[0]
    with pytest.raises(InvalidInputError):
        run_fit(tiny_config(), [], [], tmp_path / "empty", fake_factory(32))


def loader_for(
    config: RunConfig, entries: list[SlideEntry], factory: Any, truth_fn: Any = None
) -> Any:
    ds = SlideBagDataset.from_config(entries, config, sampler_factory=factory, truth_fn=truth_fn)
    return make_loader(ds, config, CPU, generator=torch.Generator().manual_seed(0), shuffle=True)


def test_train_one_epoch_reports_steps_and_cancels(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any
) -> None:
    config = tiny_config()
    torch.manual_seed(0)
    model = nn.Conv2d(3, 1, 4, stride=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = loader_for(config, fake_entries(2, 1), fake_factory(32))
    steps: list[StepInfo] = []
    metrics = train_one_epoch(
        model,
        optimizer,
        loader,
        config,
        CPU,
        epoch=0,
        normalisation=IMAGENET_NORMALISATION,
        on_step=steps.append,
    )
    assert [s.step for s in steps] == [0, 1, 2] and all(s.steps == 3 for s in steps)
    assert metrics["train_steps"] == 3 and metrics["train_patches"] == 24
    assert math.isclose(metrics["train_loss"], np.mean([s.loss for s in steps]))
    with pytest.raises(RunCancelled) as info:
        train_one_epoch(
            model,
            optimizer,
            loader,
            config,
            CPU,
            epoch=4,
            normalisation=IMAGENET_NORMALISATION,
            should_stop=lambda: True,
        )
    assert (info.value.epoch, info.value.step) == (4, 0)


@pytest.mark.parametrize("mode", ["frozen", "train"])
def test_batchnorm_statistics_follow_the_configured_mode(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, mode: str
) -> None:
    config = tiny_config(batchnorm=mode)
    model = nn.Sequential(nn.Conv2d(3, 2, 4, stride=4), nn.BatchNorm2d(2), nn.Conv2d(2, 1, 1))
    optimizer = torch.optim.Adam(model.parameters())
    before = model[1].running_mean.clone()
    train_one_epoch(
        model,
        optimizer,
        loader_for(config, fake_entries(1, 0), fake_factory(32)),
        config,
        CPU,
        epoch=0,
        normalisation=IMAGENET_NORMALISATION,
    )
    assert torch.equal(model[1].running_mean, before) == (mode == "frozen")
    assert model[1].weight.grad is not None  # the affine part learns either way


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * float("nan")


def test_non_finite_loss_stops_training(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any
) -> None:
    config = tiny_config()
    model = NaNModel()
    optimizer = torch.optim.Adam(model.parameters())
    loader = loader_for(config, fake_entries(0, 1), fake_factory(32))
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        train_one_epoch(
            model, optimizer, loader, config, CPU, epoch=0, normalisation=IMAGENET_NORMALISATION
        )


def test_evaluate_metrics_and_single_class_safety(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, truth_fn: Any
) -> None:
    config = tiny_config()
    torch.manual_seed(0)
    model = nn.Conv2d(3, 1, 8, stride=8)  # 32 px -> 4x4 maps
    model.train()
    both = evaluate(
        model,
        loader_for(config, fake_entries(2, 2), fake_factory(32), truth_fn),
        config,
        CPU,
        IMAGENET_NORMALISATION,
    )
    assert model.training  # mode restored
    assert set(both) == {"val_loss", "val_slide_auc", "val_pixel_auc", "val_slides"}
    assert both["val_slides"] == 4 and math.isfinite(both["val_loss"])
    assert 0 <= both["val_slide_auc"] <= 1 and 0 <= both["val_pixel_auc"] <= 1
    normal_only = evaluate(
        model,
        loader_for(config, fake_entries(0, 2), fake_factory(32)),
        config,
        CPU,
        IMAGENET_NORMALISATION,
    )
    assert math.isnan(normal_only["val_slide_auc"]) and math.isnan(normal_only["val_pixel_auc"])
    assert math.isfinite(normal_only["val_loss"])
    empty = evaluate(model, [], config, CPU, IMAGENET_NORMALISATION)
    assert math.isnan(empty["val_loss"]) and empty["val_slides"] == 0


def test_slide_scores_and_auc_helpers() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    assert slide_score(scores, "max", 3) == pytest.approx(0.9)
    assert slide_score(scores, "topk_mean", 2) == pytest.approx(0.8)
    assert slide_score(scores, "topk_mean", 10) == pytest.approx(0.55)
    assert math.isnan(slide_score(torch.zeros(0), "max", 1))
    with pytest.raises(ValueError):
        slide_score(scores, "median", 1)
    assert safe_auc(np.array([0, 1, 1]), np.array([0.1, 0.8, 0.6])) == 1.0
    assert math.isnan(safe_auc(np.array([1, 1]), np.array([0.1, 0.8])))
    assert math.isnan(safe_auc(np.array([]), np.array([])))


def test_improvement_rule() -> None:
    assert _improves(float("nan"), None, "max", first=True)
    assert not _improves(float("nan"), 0.5, "max", first=False)
    assert _improves(0.6, float("nan"), "max", first=False)
    assert _improves(0.6, 0.5, "max", first=False)
    assert _improves(0.5, 0.5, "max", first=False)  # a tie goes to the later epoch
    assert not _improves(0.49, 0.5, "max", first=False)
    assert _improves(0.4, 0.5, "min", first=False)
    assert not _improves(0.6, 0.5, "min", first=False)


def test_auto_selection_prefers_pixel_auc_when_there_is_truth() -> None:
    from training.mil.config import RunConfig
    from training.mil.loop import selection_metric_name

    auto = RunConfig(alpha=0.2, beta=0.0)
    assert auto.selection_metric == "auto"
    assert selection_metric_name(auto, has_truth=True) == "val_pixel_auc"
    assert selection_metric_name(auto, has_truth=False) == "val_slide_auc"
    fixed = RunConfig(alpha=0.2, beta=0.0, selection_metric="val_loss")
    assert selection_metric_name(fixed, has_truth=True) == "val_loss"


def test_topk_slide_score_and_val_loss_selection(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, tmp_path: Path
) -> None:
    config = tiny_config(
        epochs=2,
        slide_score="topk_mean",
        slide_score_k=3,
        selection_metric="val_loss",
        instance="pixel",
    )
    result = run_fit(
        config, fake_entries(1, 1), fake_entries(1, 1, prefix="v"), tmp_path, fake_factory(32)
    )
    losses = [h["val_loss"] for h in result.history]
    assert result.best_metric == min(losses)
    assert result.best_epoch == losses.index(min(losses))
