from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import ConfigurationError
from training.mil import checkpoint as checkpoint_module
from training.mil.checkpoint import (
    CheckpointError,
    capture_rng_state,
    check_resumable,
    load_checkpoint,
    load_model,
    restore_rng_state,
    save_checkpoint,
)
from training.mil.config import RunConfig
from training.mil.model import build_model
from training.mil.presets import Normalisation

CONFIG = RunConfig(alpha=0.4, beta=0.2, arch="resnet18", pretrained="none", patch_size=32)
STATS = Normalisation((0.7, 0.5, 0.6), (0.2, 0.25, 0.15))


def trained_pair() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(CONFIG)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 3, 32, 32)).mean().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip(tmp_path: Path) -> None:
    model, optimizer = trained_pair()
    loader_generator = torch.Generator().manual_seed(11)
    history = [{"epoch": 0.0, "train_loss": 0.5, "val_slide_auc": float("nan")}]
    path = save_checkpoint(
        tmp_path / "run" / "latest.pt",
        model=model,
        epoch=1,
        config=CONFIG,
        normalisation=STATS,
        optimizer=optimizer,
        loader_generator=loader_generator,
        best_metric=0.75,
        best_epoch=0,
        history=history,
    )
    loaded = load_checkpoint(path)
    assert loaded.epoch == 1 and loaded.config == CONFIG and loaded.normalisation == STATS
    assert loaded.best_metric == 0.75 and loaded.best_epoch == 0
    assert loaded.history[0]["train_loss"] == 0.5
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model_state[key], value)
    restored = torch.optim.Adam(build_model(CONFIG).parameters(), lr=1e-3)
    assert loaded.optimizer_state is not None
    restored.load_state_dict(loaded.optimizer_state)
    assert loaded.rng_state is not None and loaded.rng_state["loader"] is not None
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_rng_states_are_restored_exactly() -> None:
    loader_generator = torch.Generator().manual_seed(3)
    state = capture_rng_state(loader_generator)
    first = (
        random.random(),
        np.random.rand(),
        np.random.randn(),  # exercises numpy's cached-gaussian part of the state
        torch.rand(2),
        torch.rand(1, generator=loader_generator),
    )
    restore_rng_state(state, loader_generator)
    second = (
        random.random(),
        np.random.rand(),
        np.random.randn(),
        torch.rand(2),
        torch.rand(1, generator=loader_generator),
    )
    assert first[:3] == second[:3]
    assert torch.equal(first[3], second[3]) and torch.equal(first[4], second[4])


def test_failed_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = trained_pair()
    path = save_checkpoint(
        tmp_path / "latest.pt", model=model, epoch=1, config=CONFIG, normalisation=STATS
    )
    before = path.read_bytes()

    def exploding_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, epoch=2, config=CONFIG, normalisation=STATS)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a TumorMap checkpoint"):
        load_checkpoint(foreign)


def test_load_model_for_inference(tmp_path: Path) -> None:
    model, _ = trained_pair()
    path = save_checkpoint(
        tmp_path / "best.pt",
        model=model,
        epoch=3,
        config=CONFIG,
        normalisation=STATS,
        include_rng=False,
    )
    loaded, config, stats = load_model(path)
    assert not loaded.training and config == CONFIG and stats == STATS
    assert torch.equal(loaded.head.weight, model.head.weight)
    assert load_checkpoint(path).rng_state is None


def test_check_resumable() -> None:
    check_resumable(CONFIG, CONFIG.replace(epochs=40, num_workers=0, compile=True))
    with pytest.raises(ConfigurationError, match="alpha") as info:
        check_resumable(CONFIG, CONFIG.replace(alpha=0.6))
    assert info.value.details["fields"] == ["alpha"]
