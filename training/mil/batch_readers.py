"""Reading a slide's grid batches ahead of the model, in grid order.

Two ways, both yielding ``(uint8 NHWC tensor, real patch count)`` in the order asked:

- :func:`thread_batches`: a pool of threads started for the call. OpenSlide, the JPEG tile
  decoder and Pillow's resize release the GIL, so threads read in parallel, but the Python
  glue around each patch keeps them from feeding a GPU from many cores.
- :class:`ReaderPool`: reader PROCESSES that serve call after call until the pool is closed
  (a DataLoader with persistent workers whose sampler is the current call's list of batch
  requests). Starting 15 worker processes from a process holding a CUDA context takes a good
  part of a second; a task mapping many slides starts them once. :func:`process_batches`
  serves one call from a pool of its own.

A reader process that fails with a TumorMapError (an unreadable slide) hands the error back
intact: the caller sees the same exception type, message and details as with threads. A
reader process that dies is reported by the next read that waits for it
(:class:`ReaderProcessError`), within ``torch.utils.data``'s status-check interval (5 s).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils import signal_handling

from common.errors import InvalidInputError, TumorMapError
from slides.wsi.sampler import read_patches

logger = logging.getLogger(__name__)

# Batches read ahead of the one being computed, per reader: one in flight plus one ready, so
# the model never waits for a read that could have started earlier.
PREFETCH_PER_READER = 2

Batch = tuple[Tensor, int]


class ReaderProcessError(TumorMapError):
    """A reader process died (killed, out of memory, a crash in a slide library)."""

    code = "reader_process_died"
    http_status = 500


@dataclass(frozen=True)
class BatchRequest:
    """One batch of patches to read: everything a reader needs, and nothing large."""

    path: Path
    l0_xy: np.ndarray  # (B, 2) int64 level-0 top-left corners
    patch_size: int
    target_mpp: float
    default_mpp: float | None
    pad_to: int | None  # pad the batch with black patches up to this many


def read_request(request: BatchRequest, *, pin: bool = False) -> Batch:
    """Read one batch: (uint8 NHWC tensor, number of real patches).

    With ``pin`` the patches are decoded straight into page-locked memory, from which the
    host-to-device copy runs asynchronously, rather than copied there afterwards.
    """
    count = len(request.l0_xy)
    # A constant batch shape spares cuDNN autotuning and torch.compile a new shape for the
    # last, partial batch; the padding's outputs are discarded.
    rows = max(count, request.pad_to or 0)
    shape = (rows, request.patch_size, request.patch_size, 3)
    tensor = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
    array = tensor.numpy()
    read_patches(
        request.path,
        request.l0_xy,
        patch_size=request.patch_size,
        target_mpp=request.target_mpp,
        default_mpp=request.default_mpp,
        out=array[:count],
    )
    array[count:] = 0
    return tensor, count


def thread_batches(
    requests: Sequence[BatchRequest], *, readers: int, pin: bool
) -> Generator[Batch, None, None]:
    """The requests' batches in order, read ahead by a pool of ``readers`` threads."""
    executor = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="tumormap-infer-read")
    pending: deque[Future[Batch]] = deque()
    queued = 0
    try:
        while True:
            while queued < len(requests) and len(pending) < readers * PREFETCH_PER_READER:
                pending.append(executor.submit(read_request, requests[queued], pin=pin))
                queued += 1
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class _Failed:
    """A TumorMapError raised in a reader process, sent back as a value to be raised as is."""

    error: TumorMapError


class _RequestDataset(Dataset[Any]):
    """Item ``request`` = that request's batch; the "index" is the request itself."""

    def __getitem__(self, request: BatchRequest) -> tuple[Tensor, int] | tuple[_Failed, int]:
        try:
            # Pinned, if at all, by the DataLoader's pinning thread in the parent.
            return read_request(request)
        except TumorMapError as exc:
            # Raised here, the DataLoader would re-raise a copy built from a traceback string.
            return _Failed(exc), 0


class _Requests:
    """The persistent loader's sampler: each new iteration walks the current call's requests."""

    def __init__(self) -> None:
        self.items: Sequence[BatchRequest] = ()

    def __iter__(self) -> Iterator[BatchRequest]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class ReaderPool:
    """``processes`` reader processes that serve one call at a time, call after call.

    The processes start on the first call and end on :meth:`close` (or leaving the ``with``
    block). Only the process that made the pool may use it.
    """

    def __init__(self, processes: int, *, pin: bool) -> None:
        if processes < 1:
            raise ValueError(f"a reader pool needs at least one process, got {processes}")
        self.processes = processes
        self._requests = _Requests()
        self._loader: DataLoader[Any] = DataLoader(
            _RequestDataset(),
            batch_size=None,
            sampler=self._requests,
            num_workers=processes,
            pin_memory=pin,
            prefetch_factor=PREFETCH_PER_READER,
            persistent_workers=True,
        )
        self._busy = threading.Lock()
        self._closed = False

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        """Process ids of the live reader processes (none before the first call)."""
        iterator = getattr(self._loader, "_iterator", None)
        workers = getattr(iterator, "_workers", None) or []
        return [int(w.pid) for w in workers if w.pid is not None and w.is_alive()]

    @property
    def usable(self) -> bool:
        """Not closed, and every reader process that was started is still alive."""
        if self._closed:
            return False
        if getattr(self._loader, "_iterator", None) is None:
            return True
        return len(self.worker_pids()) == self.processes

    def batches(self, requests: Sequence[BatchRequest]) -> Generator[Batch, None, None]:
        """The requests' batches in order.

        Raises InvalidInputError when the pool is closed or another call is using it, and
        ReaderProcessError (closing the pool) when a reader process has died.
        """
        if not requests:
            return
        if self._closed:
            raise InvalidInputError("this reader pool is closed")
        if not self._busy.acquire(blocking=False):
            raise InvalidInputError("this reader pool is reading for another call")
        try:
            if not self.usable:
                self.close()
                raise ReaderProcessError(
                    "a reader process of this pool has stopped; open a new pool",
                    details={"path": str(requests[0].path)},
                )
            self._requests.items = requests
            try:
                iterator = iter(self._loader)
                _stop_sigchld_checks(iterator)
                for item, count in iterator:
                    if isinstance(item, _Failed):
                        raise item.error
                    yield item, int(count)
            except RuntimeError as exc:
                if self.usable:  # every reader is alive: the read itself failed
                    raise
                # The DataLoader's word for a worker that exited (killed, crashed).
                self.close()
                raise ReaderProcessError(
                    f"a reader process stopped while reading {requests[0].path.name!r}: {exc}",
                    details={"path": str(requests[0].path)},
                ) from exc
        finally:
            self._requests.items = ()
            self._busy.release()

    def close(self) -> None:
        """End the reader processes now (idempotent)."""
        self._closed = True
        iterator = getattr(self._loader, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()


def _stop_sigchld_checks(iterator: object) -> None:
    """Take a new DataLoader iterator's workers off torch's SIGCHLD watch.

    torch raises, from a SIGCHLD handler, a RuntimeError at whatever line the main thread is
    running when a worker dies. For workers that outlive a call, that line may be anything
    (a database write between two slides); their death is found instead by the next read that
    waits for them, where it can be reported as what it is.
    """
    if getattr(iterator, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False  # type: ignore[attr-defined]


def process_batches(
    requests: Sequence[BatchRequest], *, processes: int, pin: bool
) -> Generator[Batch, None, None]:
    """The requests' batches in order, read by ``processes`` processes started for them."""
    with ReaderPool(processes, pin=pin) as pool:
        yield from pool.batches(requests)
