"""Cancellation, exact resumption, worker independence and the DDP code path of ``fit``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from common.errors import ConfigurationError
from training.mil.checkpoint import load_checkpoint
from training.mil.config import RunConfig
from training.mil.dataset import SlideEntry
from training.mil.device import DistributedContext, single_process_group
from training.mil.loop import (
    FitResult,
    RunCancelled,
    fit,
)

Configs = Callable[..., RunConfig]
Entries = Callable[..., list[SlideEntry]]
# Timings differ from run to run; everything else in a history must be identical.
TIMING_KEYS = {"train_patches_per_s"}


def run_fit(
    config: RunConfig,
    train: list[SlideEntry],
    val: list[SlideEntry],
    workdir: Path,
    factory: Any,
    **kwargs: Any,
) -> FitResult:
    return fit(config, train, val, workdir=workdir, device="cpu", sampler_factory=factory, **kwargs)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def strip_timings(history: list[dict[str, float]]) -> list[dict[str, float | None]]:
    """Histories without timings, NaN as None (NaN != NaN would fail any comparison)."""
    return [
        {k: None if math.isnan(v) else v for k, v in h.items() if k not in TIMING_KEYS}
        for h in history
    ]


def test_resume_after_cancel_matches_an_uninterrupted_run(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, tmp_path: Path
) -> None:
    config = tiny_config(epochs=3)
    train, val = fake_entries(2, 2), fake_entries(1, 1, prefix="val")
    straight = run_fit(config, train, val, tmp_path / "straight", fake_factory(32))

    calls = {"n": 0}

    def stop_in_third_epoch() -> bool:
        calls["n"] += 1
        # 5 polls per epoch (4 slides + the end); poll 11 is the first step of epoch index 2.
        return calls["n"] == 11

    with pytest.raises(RunCancelled) as info:
        run_fit(
            config,
            train,
            val,
            tmp_path / "resumed",
            fake_factory(32),
            should_stop=stop_in_third_epoch,
        )
    assert (info.value.epoch, info.value.step) == (2, 0)
    assert info.value.code == "run_cancelled"
    assert load_checkpoint(tmp_path / "resumed" / "latest.pt").epoch == 2

    resumed = run_fit(config, train, val, tmp_path / "resumed", fake_factory(32))
    assert_same_weights(straight.model, resumed.model)
    assert strip_timings(straight.history) == strip_timings(resumed.history)
    assert (straight.best_epoch, straight.best_metric) == (resumed.best_epoch, resumed.best_metric)


def test_extending_a_finished_run_matches_a_longer_run(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, tmp_path: Path
) -> None:
    train, val = fake_entries(2, 1), fake_entries(1, 1, prefix="val")
    straight = run_fit(tiny_config(epochs=3), train, val, tmp_path / "a", fake_factory(32))
    run_fit(tiny_config(epochs=2), train, val, tmp_path / "b", fake_factory(32))
    extended = run_fit(tiny_config(epochs=3), train, val, tmp_path / "b", fake_factory(32))
    assert_same_weights(straight.model, extended.model)
    assert len(extended.history) == 3


def test_loader_workers_do_not_change_the_result(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, tmp_path: Path
) -> None:
    train, val = fake_entries(2, 2), []
    serial = run_fit(tiny_config(epochs=1), train, val, tmp_path / "w0", fake_factory(32))
    parallel = run_fit(
        tiny_config(epochs=1, num_workers=2), train, val, tmp_path / "w2", fake_factory(32)
    )
    assert_same_weights(serial.model, parallel.model)


def test_resume_refuses_a_different_configuration(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, tmp_path: Path
) -> None:
    train = fake_entries(1, 1)
    run_fit(tiny_config(epochs=1), train, [], tmp_path, fake_factory(32))
    with pytest.raises(ConfigurationError, match="alpha"):
        run_fit(tiny_config(epochs=2, alpha=0.6), train, [], tmp_path, fake_factory(32))
    # resume=False starts afresh instead.
    fresh = run_fit(
        tiny_config(epochs=1, alpha=0.6), train, [], tmp_path, fake_factory(32), resume=False
    )
    assert fresh.epochs_completed == 1


def test_fit_through_the_ddp_code_path(
    tiny_config: Configs, fake_entries: Entries, fake_factory: Any, tmp_path: Path
) -> None:
    config = tiny_config(epochs=1)
    train, val = fake_entries(1, 1), fake_entries(1, 1, prefix="v")
    plain = run_fit(config, train, val, tmp_path / "plain", fake_factory(32))
    with single_process_group(str(tmp_path / "store")) as ctx:
        assert ctx == DistributedContext()
        ddp = run_fit(config, train, val, tmp_path / "ddp", fake_factory(32), distributed=ctx)
    assert not isinstance(ddp.model, nn.parallel.DistributedDataParallel)
    assert (tmp_path / "ddp" / "latest.pt").is_file()
    # One process: DDP averages over a single rank, so the result is the plain one.
    assert_same_weights(plain.model, ddp.model)
