from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from common.errors import ConfigurationError
from training.mil.device import (
    DistributedContext,
    all_reduce_mean,
    autocast,
    barrier,
    broadcast_object,
    configure_backends,
    context_from_env,
    distributed_sampler,
    prepare_model,
    resolve_device,
    single_process_group,
    unwrap_model,
    uses_channels_last,
    wrap_ddp,
)


@pytest.fixture
def restore_determinism() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ConfigurationError, match="device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CUDA-less error")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(ConfigurationError, match="CUDA is not available"):
        resolve_device("cuda")


def test_cpu_path_is_fp32_plain_and_uncompiled() -> None:
    cpu = torch.device("cpu")
    with autocast(cpu, enabled=True):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
    assert not uses_channels_last(cpu, True)
    model = nn.Conv2d(3, 1, 1)
    prepared = prepare_model(model, cpu, channels_last=True, compile_model=True)
    assert prepared is model
    assert model.weight.is_contiguous()


def test_configure_backends(restore_determinism: None) -> None:
    configure_backends(torch.device("cpu"), deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    configure_backends(torch.device("cpu"), deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_context_from_env() -> None:
    assert context_from_env({}) == DistributedContext(0, 1, 0)
    ctx = context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert ctx == DistributedContext(rank=3, world_size=4, local_rank=1)
    assert ctx.is_distributed and not ctx.is_main
    with pytest.raises(ConfigurationError):
        context_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigurationError):
        context_from_env({"WORLD_SIZE": "two"})


def test_single_process_helpers_are_identities() -> None:
    ctx = DistributedContext()
    assert all_reduce_mean({"loss": 2.0}, ctx) == {"loss": 2.0}
    assert broadcast_object({"a": 1}, ctx) == {"a": 1}
    barrier()
    model = nn.Linear(2, 1)
    assert wrap_ddp(model, ctx, torch.device("cpu")) is model
    assert distributed_sampler(list(range(4)), ctx, shuffle=True, seed=0) is None  # type: ignore[arg-type]


def test_distributed_sampler_shards_the_slide_list() -> None:
    shards = []
    for rank in range(2):
        ctx = DistributedContext(rank=rank, world_size=2, local_rank=rank)
        sampler = distributed_sampler(list(range(6)), ctx, shuffle=True, seed=0)  # type: ignore[arg-type]
        assert sampler is not None
        sampler.set_epoch(1)
        shards.append(list(sampler))
    assert sorted(shards[0] + shards[1]) == list(range(6))


def test_ddp_path_in_a_one_process_group(tmp_path: Path) -> None:
    with single_process_group(str(tmp_path / "store")) as ctx:
        model = nn.Linear(3, 1)
        wrapped = wrap_ddp(model, ctx, torch.device("cpu"))
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel)
        assert unwrap_model(wrapped) is model
        wrapped(torch.rand(4, 3)).sum().backward()
        assert model.weight.grad is not None
        assert all_reduce_mean({"b": 4.0, "a": 1.0}, ctx) == {"a": 1.0, "b": 4.0}
        assert broadcast_object({"x": [1, 2]}, ctx) == {"x": [1, 2]}
        barrier()


def test_unwrap_compiled_style_wrappers() -> None:
    inner = nn.Linear(1, 1)

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = inner

    assert unwrap_model(Wrapper()) is inner
    assert unwrap_model(inner) is inner
