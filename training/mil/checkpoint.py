"""Resumable checkpoints, written atomically.

``latest.pt`` (written every epoch) holds everything needed to continue a run exactly: model,
optimizer, completed epochs, every RNG state (python, numpy, torch CPU, CUDA, the loader's
shuffling generator), the config dict, normalisation statistics, best metric/epoch and the
metric history. ``best.pt`` (written when the selection metric improves) holds the same minus
the optimizer and RNG states: it is what inference loads.

Files are written to a temporary file in the same directory and moved into place with
``os.replace``, so a crash mid-write never leaves a truncated checkpoint. Everything is stored
as tensors and plain Python values, so files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.errors import ConfigurationError, TumorMapError
from training.mil.config import RunConfig
from training.mil.device import unwrap_model
from training.mil.model import FullyConvResNet, build_model
from training.mil.presets import Normalisation

# Bumped whenever the layout below changes incompatibly.
CHECKPOINT_FORMAT = 1
LATEST_NAME = "latest.pt"
BEST_NAME = "best.pt"


class CheckpointError(TumorMapError):
    """A checkpoint file is missing, unreadable or from an incompatible version."""

    code = "checkpoint_error"
    http_status = 500


@dataclass
class Checkpoint:
    """The decoded content of a checkpoint file."""

    epoch: int  # number of completed epochs
    config: RunConfig
    normalisation: Normalisation
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def capture_rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state a run consumes, as tensors and plain Python values."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }
    return state


def restore_rng_state(
    state: dict[str, Any], loader_generator: torch.Generator | None = None
) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA states are restored only where CUDA is."""
    version, mt_state, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in mt_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (
            str(np_name),
            np.asarray(np_keys.numpy(), dtype=np.uint32),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        )
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])


def _atomic_save(payload: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    epoch: int,
    config: RunConfig,
    normalisation: Normalisation,
    optimizer: torch.optim.Optimizer | None = None,
    loader_generator: torch.Generator | None = None,
    include_rng: bool = True,
    best_metric: float | None = None,
    best_epoch: int | None = None,
    history: list[dict[str, float]] | None = None,
) -> Path:
    """Write a checkpoint atomically at ``path``; returns ``path``.

    ``model`` may be wrapped (DDP, compile): the plain module's state is stored, so the file
    loads into an unwrapped model. ``epoch`` is the number of completed epochs.
    """
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "config": config.to_dict(),
        "normalisation": normalisation.to_dict(),
        "model": state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": capture_rng_state(loader_generator) if include_rng else None,
        "best_metric": None if best_metric is None else float(best_metric),
        "best_epoch": best_epoch,
        "history": [dict(entry) for entry in (history or [])],
    }
    return _atomic_save(payload, Path(path))


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safely: ``weights_only``).

    Raises CheckpointError when the file is absent, unreadable or of another format, and
    ConfigurationError when its stored config is no longer valid.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", details={"path": str(path)})
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"cannot read checkpoint {path}: {exc}", details={"path": str(path)}
        ) from exc
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise CheckpointError(
            f"{path} is not a TumorMap checkpoint of format {CHECKPOINT_FORMAT} (found {found!r})",
            details={"path": str(path)},
        )
    return Checkpoint(
        epoch=int(raw["epoch"]),
        config=RunConfig.from_dict(raw["config"]),
        normalisation=Normalisation.from_dict(raw["normalisation"]),
        model_state=raw["model"],
        optimizer_state=raw.get("optimizer"),
        rng_state=raw.get("rng"),
        best_metric=raw.get("best_metric"),
        best_epoch=raw.get("best_epoch"),
        history=list(raw.get("history") or []),
    )


def load_model(
    path: Path, *, device: str | torch.device = "cpu"
) -> tuple[FullyConvResNet, RunConfig, Normalisation]:
    """A checkpoint's model in eval mode on ``device``, with its config and normalisation."""
    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint.config, load_pretrained=False)
    try:
        model.load_state_dict(checkpoint.model_state, strict=True)
    except RuntimeError as exc:
        raise ConfigurationError(
            f"checkpoint {path} does not match its own configuration: {exc}",
            details={"path": str(path)},
        ) from exc
    model.to(device).eval()
    return model, checkpoint.config, checkpoint.normalisation


# Fields that may change between a run and its resumption: they do not alter what is learned
# (epochs only extends the schedule; the others are how, not what, is computed).
RESUMABLE_CHANGES = frozenset({"epochs", "num_workers", "compile"})


def check_resumable(saved: RunConfig, current: RunConfig) -> None:
    """Raise ConfigurationError if ``current`` cannot continue a run saved with ``saved``."""
    old, new = saved.to_dict(), current.to_dict()
    changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed:
        raise ConfigurationError(
            "cannot resume: the checkpoint was made with a different configuration ("
            + ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
            + ")",
            details={"fields": changed},
        )
