"""Whole-slide inference: a trained fully convolutional network turned into one tumor map.

The slide is cut into a regular grid of NON-overlapping patches at the run's ``target_mpp`` and
``patch_size`` (:meth:`slides.wsi.sampler.PatchSampler.grid`); every patch holding any tissue
(``GRID_MIN_TISSUE``) is inferred, in batches, and each patch's h x w logit map (7 x 7 for
224 px at output stride 32) is passed through a sigmoid and stitched in place: grid patch
``(r, c)`` fills map cells ``(r * h + i, c * w + j)``. A map cell is therefore
``l0_patch_size / h`` level-0 pixels wide, and cell ``(m_row, m_col)`` covers level-0
``l0_origin + (m_col, m_row) * l0_cell_size`` to the next multiple. Grid corners are rounded to
whole level-0 pixels by the sampler, so a patch may sit up to half a level-0 pixel away from its
cells; at 32 level-0 pixels per cell this is invisible.

Reading overlaps computing: patches are read several batches ahead while the model runs on
the current batch, either by a small pool of threads or, with ``reader_processes``, by reader
processes that the calling process keeps from one slide to the next
(:mod:`training.mil.batch_readers`), which a GPU needs: a 224 px patch at 20x costs 0.25-2 ms
of CPU to read (direct JPEG tile decoding or OpenSlide, see :mod:`slides.wsi.jpeg_tiles`), and
the Python glue around it keeps threads from scaling much past ~3,000 patches/s on 16 cores.
Batches are consumed in grid order either way, so the result does not depend on reader
timing. On CUDA the model runs under bf16 autocast with channels-last memory (as in
training); on the CPU it runs in fp32.

The device never waits for the host: batch k+1 is copied and launched before batch k's
probabilities are read back (``BATCHES_IN_FLIGHT``), and each batch's read-back is an
asynchronous copy into page-locked memory, enqueued right behind its own forward pass, that
the host waits for only when it stitches that batch. A synchronous loop would leave the GPU
idle while the host fetches, copies, launches and stitches, a few milliseconds of every
~10 ms batch of ResNet50 on a current GPU.

Probabilities are stored as ``round(p * 255)`` in uint8, the form the exact histogram AUC of
:mod:`evaluation.metrics.auc` consumes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from common.errors import EmptyTissueError, InvalidInputError, TumorMapError
from slides.wsi.sampler import GRID_MIN_TISSUE, PatchGrid, PatchSampler
from slides.wsi.tissue import TissueMask
from training.mil.batch_readers import (
    BatchRequest,
    ReaderPool,
    process_batches,
    thread_batches,
)
from training.mil.checkpoint import load_model
from training.mil.config import RunConfig
from training.mil.device import (
    autocast,
    configure_backends,
    prepare_model,
    resolve_device,
    uses_channels_last,
)
from training.mil.loop import RunCancelled, usable_workers
from training.mil.maps import SlideMap
from training.mil.presets import Normalisation, prepare_batch

logger = logging.getLogger(__name__)

# Patches per forward pass. 128 x 224 px patches are 19 MB of uint8 and ~0.5 GB of ResNet50
# activations in bf16: large enough to keep a GPU busy, small enough to share it.
DEFAULT_BATCH_SIZE = 128
# A bigger batch would not speed a GPU up any further and its activations (ResNet50, 224 px)
# would exceed the memory of most cards; a typo such as 100000 must fail early, not OOM.
MAX_BATCH_SIZE = 4096
# Reader threads by default: enough to feed a GPU from a many-core worker (each thread reads
# ~500-800 patches/s at 20x), capped because OpenSlide's per-handle tile cache is shared and
# more threads mostly contend for the GIL in Python-level glue.
MAX_DEFAULT_READERS = 8
# The largest map accepted (cells): a uint8 map plus its bool mask of 2^28 cells take 512 MiB,
# and the rasterised truth as much again during evaluation. A real slide at the paper's setting
# (224 px at 0.5 um/px, 7 x 7 cells per patch) has a few million cells; only a misconfiguration
# (tiny patches at a very fine resolution on a huge slide) comes near this.
MAX_MAP_CELLS = 1 << 28
# Probabilities are stored on this many levels: uint8, round(p * 255).
PROB_LEVELS = 255
# Batches launched on the device and not yet stitched: the newest one computes while the
# oldest one's probabilities come back to the host.
BATCHES_IN_FLIGHT = 2

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class InferenceCancelled(RunCancelled):
    """``should_stop()`` returned True between two batches: inference stopped, nothing returned.

    A :class:`~training.mil.loop.RunCancelled`, so a task catching cancelled runs catches
    cancelled inference too.
    """

    code = "inference_cancelled"

    def __init__(self, done_patches: int, total_patches: int) -> None:
        # RunCancelled's own constructor speaks of training epochs; the fields it defines are
        # still set below for handlers that read them.
        TumorMapError.__init__(
            self,
            f"inference cancelled after {done_patches} of {total_patches} patches",
            details={"done_patches": done_patches, "total_patches": total_patches},
        )
        self.epoch = 0
        self.step = done_patches
        self.done_patches = done_patches
        self.total_patches = total_patches


class InferenceError(TumorMapError):
    """The model could not produce a usable map (wrong output shape, NaN, out of memory)."""

    code = "inference_failed"
    http_status = 422


def default_readers() -> int:
    """Reader threads used when the caller does not say: one per core, at most 8."""
    return max(1, min(MAX_DEFAULT_READERS, os.cpu_count() or 1))


def _check_arguments(batch_size: int, readers: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidInputError(
            f"batch_size must be in [1, {MAX_BATCH_SIZE}], got {batch_size}",
            details={"field": "batch_size"},
        )
    if readers < 1:
        raise InvalidInputError(
            f"readers must be >= 1, got {readers}", details={"field": "readers"}
        )


def _check_reader_processes(processes: int) -> None:
    if processes < 0:
        raise InvalidInputError(
            f"reader_processes must be >= 0, got {processes}",
            details={"field": "reader_processes"},
        )


def _check_map_size(grid: PatchGrid, cells: tuple[int, int], path: Path) -> None:
    m_rows, m_cols = grid.shape[0] * cells[0], grid.shape[1] * cells[1]
    if m_rows * m_cols > MAX_MAP_CELLS:
        raise InvalidInputError(
            f"the map of {path.name!r} would have {m_rows} x {m_cols} cells, more than "
            f"{MAX_MAP_CELLS}: use larger patches or a coarser target_mpp",
            details={"path": str(path), "shape": [m_rows, m_cols], "max_cells": MAX_MAP_CELLS},
        )


def _check_logits(logits: Tensor, count: int, path: Path) -> None:
    if logits.dim() != 4 or logits.shape[0] < count or logits.shape[1] != 1:
        raise InferenceError(
            f"the model must return (N, 1, h, w) logits, got shape {tuple(logits.shape)} "
            f"for {count} patches",
            details={"path": str(path), "shape": list(logits.shape)},
        )


@dataclass
class _InFlight:
    """One batch launched on the device, its results on their way to the host."""

    start: int  # its first patch's index in the grid
    count: int  # real patches (the rest is padding)
    levels: Tensor  # (count, h, w) uint8 on the host once ``ready`` has completed
    finite: Tensor  # 0-dim bool: all of its logits were finite
    ready: torch.cuda.Event | None  # recorded behind the copies (CUDA only)

    def wait(self) -> tuple[np.ndarray, bool]:
        """Block until the batch's results are on the host: (levels, finite)."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.levels.numpy(), bool(self.finite)


def _launch_read_back(logits: Tensor, start: int, count: int) -> _InFlight:
    """Queue (N, 1, h, w) logits -> uint8 round(sigmoid * 255) and its copy to the host.

    Nothing here waits for the device: on CUDA the copies go to page-locked memory behind the
    forward pass on the same stream, and an event marks when they are done.
    """
    probs = torch.sigmoid(logits.float())
    levels = probs.mul_(PROB_LEVELS).round_().to(torch.uint8)[:, 0]
    finite = torch.isfinite(logits).all()
    if logits.device.type != "cuda":
        return _InFlight(start, count, levels, finite, None)
    # non_blocking device-to-host copies land in page-locked memory and return at once.
    host_levels = levels.to("cpu", non_blocking=True)
    host_finite = finite.to("cpu", non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return _InFlight(start, count, host_levels, host_finite, ready)


def batch_requests(
    path: Path,
    grid: PatchGrid,
    config: RunConfig,
    batch_size: int,
    default_mpp: float | None,
    pad_to: int | None,
) -> list[BatchRequest]:
    """The grid's patches as consecutive batches of ``batch_size`` for the readers."""
    return [
        BatchRequest(
            path=path,
            l0_xy=grid.l0_xy[first : first + batch_size],
            patch_size=config.patch_size,
            target_mpp=config.target_mpp,
            default_mpp=default_mpp,
            pad_to=pad_to,
        )
        for first in range(0, len(grid.l0_xy), batch_size)
    ]


def infer_slide(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    config: RunConfig,
    normalisation: Normalisation,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    default_mpp: float | None = None,
    tissue: TissueMask | None = None,
    readers: int | None = None,
    reader_processes: int = 0,
    reader_pool: ReaderPool | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> SlideMap:
    """Infer ``model`` over every tissue patch of one slide and stitch a :class:`SlideMap`.

    ``config`` gives the patch geometry (``patch_size`` at ``target_mpp``) and the precision
    policy (``amp``, ``channels_last``: CUDA only); ``normalisation`` is the run's training
    statistics (eval standardisation, no augmentation). ``model`` is any module returning
    ``(N, 1, h, w)`` logits; it is moved to ``device`` and run in eval mode under
    ``torch.inference_mode()``, its training mode restored afterwards. ``tissue`` replaces the
    slide's computed tissue mask; ``default_mpp`` is used when the slide has no resolution
    metadata. ``readers``: reader threads (default :func:`default_readers`);
    ``reader_processes`` > 0 reads in that many processes instead, started for this call (not
    from a daemonic process, e.g. a Celery prefork child, which falls back to threads);
    ``reader_pool`` (from :func:`open_reader_pool`) reads in processes already started, kept
    for the caller's next slides.

    ``on_progress(done_patches, total_patches)`` is called after every batch;
    ``should_stop()`` is polled before every batch and raises :class:`InferenceCancelled`.
    Raises EmptyTissueError when the grid holds no tissue patch, SlideUnreadableError when the
    slide cannot be read, InferenceError when the model's output is unusable,
    ReaderProcessError when a reader process dies.
    """
    slide_path = Path(os.fspath(path))
    n_readers = default_readers() if readers is None else int(readers)
    _check_arguments(batch_size, n_readers)
    _check_reader_processes(reader_processes)
    dev = resolve_device(device)
    sampler = PatchSampler(
        slide_path,
        patch_size=config.patch_size,
        target_mpp=config.target_mpp,
        default_mpp=default_mpp,
        tissue=tissue,
        min_tissue=config.min_tissue,
    )
    grid = sampler.grid(min_tissue=GRID_MIN_TISSUE)
    # The exact (h, w) is only known from the model's output; ceil(S / stride) is what the
    # configured ResNet gives and is enough to refuse an absurd map before reading anything.
    expected = math.ceil(config.patch_size / config.output_stride)
    _check_map_size(grid, (expected, expected), slide_path)
    if config.patch_size % config.output_stride:
        logger.warning(
            "%s: patch size %d is not a multiple of the output stride %d; the last cell of "
            "each patch covers less of it than the others",
            slide_path.name,
            config.patch_size,
            config.output_stride,
        )

    channels_last = uses_channels_last(dev, config.channels_last)
    was_training = model.training
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.eval()
    total = len(grid.l0_xy)
    starts = list(range(0, total, batch_size))
    pad_to = batch_size if dev.type == "cuda" else None
    pin = dev.type == "cuda"
    probs: np.ndarray | None = None
    cells = (0, 0)
    done = 0
    started = time.perf_counter()
    requests = batch_requests(slide_path, grid, config, batch_size, default_mpp, pad_to)
    if reader_pool is not None:
        batches = reader_pool.batches(requests)
    elif processes := usable_workers(reader_processes):
        batches = process_batches(requests, processes=processes, pin=pin)
    else:
        batches = thread_batches(requests, readers=n_readers, pin=pin)

    in_flight: deque[_InFlight] = deque()

    def stitch(batch: _InFlight) -> None:
        nonlocal probs, cells, done
        levels, finite = batch.wait()
        if not finite:
            raise InferenceError(
                f"the model produced non-finite logits on {slide_path.name!r}",
                details={"path": str(slide_path)},
            )
        if probs is None:
            cells = (int(levels.shape[1]), int(levels.shape[2]))
            _check_map_size(grid, cells, slide_path)
            probs = np.zeros((grid.shape[0] * cells[0], grid.shape[1] * cells[1]), dtype=np.uint8)
        elif levels.shape[1:] != cells:
            raise InferenceError(
                f"the model's map shape changed from {cells} to {levels.shape[1:]}",
                details={"path": str(slide_path)},
            )
        index = grid.index[batch.start : batch.start + batch.count]
        # A (rows, h, cols, w) view: patch (r, c) is the block [r, :, c, :].
        blocks = probs.reshape(grid.shape[0], cells[0], grid.shape[1], cells[1])
        blocks[index[:, 0], :, index[:, 1], :] = levels
        done += batch.count
        if on_progress is not None:
            on_progress(done, total)

    try:
        with torch.inference_mode():
            for start in starts:
                if should_stop is not None and should_stop():
                    # Batches already computed are kept in the count the caller is told.
                    while in_flight:
                        stitch(in_flight.popleft())
                    raise InferenceCancelled(done, total)
                batch, count = next(batches)
                x = prepare_batch(
                    batch, device=dev, normalisation=normalisation, channels_last=channels_last
                )
                try:
                    with autocast(dev, config.amp):
                        logits = model(x)
                except torch.cuda.OutOfMemoryError as exc:
                    raise InferenceError(
                        f"out of GPU memory at batch size {batch_size}: lower batch_size",
                        details={"path": str(slide_path), "batch_size": batch_size},
                    ) from exc
                except RuntimeError as exc:  # torch's error for a model that cannot run
                    raise InferenceError(
                        f"the model failed on {slide_path.name!r}: {exc}",
                        details={"path": str(slide_path)},
                    ) from exc
                _check_logits(logits, count, slide_path)
                in_flight.append(_launch_read_back(logits[:count], start, count))
                if len(in_flight) >= BATCHES_IN_FLIGHT:
                    stitch(in_flight.popleft())
            while in_flight:
                stitch(in_flight.popleft())
    finally:
        # Reads already running finish (or their processes end) before returning: nothing
        # keeps using the slide.
        batches.close()
        model.train(was_training)

    if probs is None:  # grid() already refuses an empty grid; kept for the type checker
        raise EmptyTissueError(
            f"slide {slide_path.name!r} has no tissue patch to infer",
            details={"path": str(slide_path)},
        )
    elapsed = time.perf_counter() - started
    logger.info(
        "%s: %d patches in %.1f s (%.0f patches/s), map %dx%d",
        slide_path.name,
        total,
        elapsed,
        total / max(elapsed, 1e-9),
        probs.shape[0],
        probs.shape[1],
    )
    meta = sampler.metadata
    l0_cell_size = grid.l0_patch_size / cells[0]
    valid = _valid_cells(grid, cells, l0_cell_size, (meta.l0_width, meta.l0_height))
    probs[~valid] = 0
    return SlideMap(
        probs=probs,
        valid=valid,
        l0_origin=(0.0, 0.0),
        l0_cell_size=float(l0_cell_size),
        patch_size=config.patch_size,
        target_mpp=config.target_mpp,
        m_cells_per_patch=cells,
        l0_slide_size=(meta.l0_width, meta.l0_height),
        slide_mpp=meta.mpp,
    )


def _valid_cells(
    grid: PatchGrid, cells: tuple[int, int], l0_cell_size: float, l0_slide_size: tuple[int, int]
) -> np.ndarray:
    """Cells of inferred patches whose centre lies on the slide."""
    rows, cols = grid.shape
    valid = np.zeros((rows * cells[0], cols * cells[1]), dtype=bool)
    blocks = valid.reshape(rows, cells[0], cols, cells[1])
    blocks[grid.index[:, 0], :, grid.index[:, 1], :] = True
    l0_centre_x = (np.arange(valid.shape[1]) + 0.5) * l0_cell_size
    l0_centre_y = (np.arange(valid.shape[0]) + 0.5) * l0_cell_size
    valid &= (l0_centre_y < l0_slide_size[1])[:, None]
    valid &= (l0_centre_x < l0_slide_size[0])[None, :]
    return valid


def open_reader_pool(
    processes: int, device: str | torch.device = "auto"
) -> contextlib.AbstractContextManager[ReaderPool | None]:
    """A ``with`` block holding ``processes`` reader processes for several :func:`infer_slide`
    calls on ``device``, or None (read with threads) for 0 or from a daemonic process."""
    _check_reader_processes(processes)
    count = usable_workers(processes)
    if count == 0:
        return contextlib.nullcontext(None)
    return ReaderPool(count, pin=resolve_device(device).type == "cuda")


def infer_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    slide_paths: Sequence[str | os.PathLike[str]],
    *,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    default_mpp: float | None = None,
    readers: int | None = None,
    reader_processes: int = 0,
    on_progress: Callable[[int, int, int], None] | None = None,
    should_stop: StopFn | None = None,
) -> list[SlideMap]:
    """Load a checkpoint (model, config, normalisation) and infer every slide, in order.

    ``on_progress(slide_index, done_patches, total_patches)`` reports within each slide.
    ``torch.compile`` is used when the checkpoint's config asks for it and the device is CUDA.
    ``reader_processes`` are started once for all the slides.
    Errors are those of :func:`load_model` and :func:`infer_slide`; the first one stops.
    """
    dev = resolve_device(device)
    configure_backends(dev)
    model, config, normalisation = load_model(Path(os.fspath(checkpoint_path)), device=dev)
    net = prepare_model(
        model, dev, channels_last=config.channels_last, compile_model=config.compile
    )
    maps: list[SlideMap] = []
    with open_reader_pool(reader_processes, dev) as pool:  # started once for every slide
        for slide_index, slide_path in enumerate(slide_paths):

            def progress(done: int, total: int, slide_index: int = slide_index) -> None:
                if on_progress is not None:
                    on_progress(slide_index, done, total)

            maps.append(
                infer_slide(
                    net,
                    slide_path,
                    config=config,
                    normalisation=normalisation,
                    device=dev,
                    batch_size=batch_size,
                    default_mpp=default_mpp,
                    readers=readers,
                    reader_pool=pool,
                    on_progress=progress,
                    should_stop=should_stop,
                )
            )
    return maps
