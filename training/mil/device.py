"""Where and how the engine computes: device choice, precision, memory format, compile, DDP.

Policy: bf16 autocast, channels-last and ``torch.compile`` apply on CUDA only; the CPU path is
plain fp32 (bf16 on CPU is slow on most x86 machines and changes results). TF32 matmuls are
enabled on CUDA (Ampere and later), as the paper-scale runs are throughput-bound.

Distributed training follows torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``): one process per GPU, each rank trains on one slide per step (its share of the
slide list via ``DistributedSampler``), gradients are averaged by DistributedDataParallel.
Everything here imports and works on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from common.errors import ConfigurationError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(
    spec: str | torch.device = "auto", *, local_rank: int | None = None
) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a device.

    Under DDP pass ``local_rank`` to get this process's GPU. Raises ConfigurationError when
    CUDA is asked for and absent.
    """
    name = str(spec) if isinstance(spec, torch.device) else spec
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"device {name!r} requested but CUDA is not available on this machine",
                details={"field": "device"},
            )
        device = torch.device(name)
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        return device
    raise ConfigurationError(
        f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}",
        details={"field": "device"},
    )


def configure_backends(device: torch.device, *, deterministic: bool = False) -> None:
    """TF32 on CUDA; cuDNN autotuning unless ``deterministic``; deterministic algorithms."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        # cuBLAS needs this to be deterministic; harmless elsewhere.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``enabled``; a no-op context (fp32) elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_channels_last(device: torch.device, requested: bool) -> bool:
    """Channels-last only pays off on CUDA tensor cores."""
    return requested and device.type == "cuda"


def prepare_model(
    model: nn.Module, device: torch.device, *, channels_last: bool, compile_model: bool
) -> nn.Module:
    """Move to ``device``; channels-last memory and ``torch.compile`` on CUDA only.

    Returns the (possibly compiled) module; ``unwrap_model`` gives back the original.
    """
    model = model.to(device)
    if uses_channels_last(device, channels_last):
        model = model.to(memory_format=torch.channels_last)
    if compile_model and device.type == "cuda":
        compiled: nn.Module = torch.compile(model)  # type: ignore[assignment]
        return compiled
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


# -- distributed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and reports progress."""
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()


def context_from_env(env: Mapping[str, str] | None = None) -> DistributedContext:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; single-process when unset."""
    env = os.environ if env is None else env
    try:
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigurationError(f"malformed torchrun environment: {exc}") from exc
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigurationError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world_size}")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def init_distributed(
    device: torch.device | None = None, *, init_method: str | None = None
) -> DistributedContext:
    """Join the process group described by torchrun's environment (no-op for one process).

    NCCL on CUDA, gloo on CPU. ``init_method`` defaults to ``env://`` (MASTER_ADDR/PORT).
    """
    ctx = context_from_env()
    if not ctx.is_distributed or dist.is_initialized():
        return ctx
    use_cuda = (device.type == "cuda") if device is not None else torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        init_method=init_method or "env://",
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    return ctx


def cleanup_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, ctx: DistributedContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed, else ``model`` itself."""
    if not ctx.is_distributed and not (dist.is_available() and dist.is_initialized()):
        return model
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def distributed_sampler(
    dataset: Dataset[Any], ctx: DistributedContext, *, shuffle: bool, seed: int
) -> DistributedSampler[Any] | None:
    """Each rank's share of the slide list (None when single-process).

    Call ``set_epoch(epoch)`` on it every epoch, as for the dataset.
    """
    if not ctx.is_distributed:
        return None
    return DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed
    )


def all_reduce_mean(values: Mapping[str, float], ctx: DistributedContext) -> dict[str, float]:
    """The mean over ranks of each value (identity when not distributed).

    Every rank must pass the same keys; they are reduced in sorted order.
    """
    result = {key: float(value) for key, value in values.items()}
    if not (dist.is_available() and dist.is_initialized()):
        return result
    keys = sorted(result)
    backend_cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if backend_cuda else None
    tensor = torch.tensor([result[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= dist.get_world_size()
    return {key: float(v) for key, v in zip(keys, tensor.tolist(), strict=True)}


def broadcast_object(value: Any, ctx: DistributedContext) -> Any:
    """Rank 0's ``value`` on every rank (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def single_process_group(init_file: str) -> Iterator[DistributedContext]:
    """A one-process gloo group (for tests and notebooks exercising the DDP code path)."""
    dist.init_process_group(backend="gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    try:
        yield DistributedContext(rank=0, world_size=1, local_rank=0)
    finally:
        dist.destroy_process_group()
