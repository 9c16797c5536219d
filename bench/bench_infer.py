"""Whole-slide inference throughput: patches/s end to end, and what bounds it.

One synthetic 20x slide (0.5 um/px) is generated (or reused from ``--workdir``) and inferred
with ``training.mil.infer.infer_slide`` at 224 px / 0.5 um/px, as the paper's maps are, with
the slide's tissue mask passed in as the inference task passes the one stored at import.
Figures, each best of ``--repeats``:

- ``end to end``: ``infer_slide`` as a task calls it: grid, patch reads (threads, or reader
  processes with ``--reader-processes``) overlapped with the model, stitching; everything from
  the slide path to the finished map. ``first batch after`` is the start-up (grid, readers,
  the first batch's reads); ``steady`` the rate from the first batch to the last. With reader
  processes, twice: started for the slide (a task's first slide), and kept from the previous
  call (every later slide of the task).
- ``reading only``: the same call with a model that returns zeros at once: the I/O ceiling of
  the readers (JPEG tile or OpenSlide reads, resize, batch assembly).
- ``model only``: the network on one random batch already on the device, repeated (compute
  ceiling; CUDA synchronised).
- ``sequential``: the baseline without overlap: read a batch, then run the model on it, in one
  thread (same grid, batches, transform and precision).

CPU (what this machine can run)::

    .venv/bin/python bench/bench_infer.py --arch resnet18 --threads 1

GPU worker (target >= 10,000 patches/s for ResNet50 in bf16 at 224 px on one H100; see
``bench/gpu.sh``)::

    python bench/bench_infer.py --device cuda --arch resnet50 --amp --channels-last \
        --batch-size 128 --readers 14 --reader-processes 0 15 --width 32768 --height 24576

The weights are random (``pretrained="none"``): throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

import slides.wsi.reader as reader_module  # noqa: E402
from slides.wsi.reader import clear_slide_cache  # noqa: E402
from slides.wsi.sampler import GRID_MIN_TISSUE, PatchSampler  # noqa: E402
from slides.wsi.synthetic import generate_slide  # noqa: E402
from slides.wsi.tissue import TissueMask  # noqa: E402
from training.mil.batch_readers import BatchRequest, ReaderPool, thread_batches  # noqa: E402
from training.mil.config import RunConfig  # noqa: E402
from training.mil.device import (  # noqa: E402
    autocast,
    configure_backends,
    prepare_model,
    resolve_device,
)
from training.mil.infer import (  # noqa: E402
    batch_requests,
    default_readers,
    infer_slide,
    open_reader_pool,
)
from training.mil.model import build_model, map_shape  # noqa: E402
from training.mil.presets import IMAGENET_NORMALISATION, prepare_batch  # noqa: E402

PATCH = 224
MPP = 0.5
TARGET_GPU = 10_000.0  # patches/s, ResNet50 bf16 224 px on one H100
# Model-only timing: this many forward passes after the warm-up ones.
MODEL_ITERATIONS = 5
WARMUP_ITERATIONS = 2


def _mark(marks: list[tuple[float, int]], done: int, _total: int) -> None:
    marks.append((time.perf_counter(), done))


@dataclass(frozen=True)
class Run:
    """One timed ``infer_slide`` call."""

    patches: int
    seconds: float  # from the call to the finished map
    first_batch: float  # seconds until the first batch was inferred (mask, grid, start-up)
    steady: float  # patches/s from the first batch to the last

    @classmethod
    def from_marks(cls, start: float, end: float, marks: list[tuple[float, int]]) -> Run:
        first_time, first_done = marks[0]
        last_time, last_done = marks[-1]
        span = last_time - first_time
        steady = (last_done - first_done) / span if span > 0 else float("nan")
        return cls(last_done, end - start, first_time - start, steady)


class FreshPaths:
    """New names (hard links) for the one slide: every timed pass reads it as a slide never
    read before, as a task meets each of its slides, rather than from tiles a previous pass
    left decoded in a reader's cache."""

    def __init__(self, slide_path: Path) -> None:
        self.slide_path = slide_path
        self.made: list[Path] = []

    def __call__(self) -> Path:
        path = self.slide_path.with_name(f"{self.slide_path.stem}.pass{len(self.made)}.svs")
        path.unlink(missing_ok=True)
        try:
            os.link(self.slide_path, path)
        except OSError:  # a file system without hard links
            shutil.copyfile(self.slide_path, path)
        self.made.append(path)
        return path

    def remove(self) -> None:
        for path in self.made:
            path.unlink(missing_ok=True)


class NullModel(nn.Module):
    """Returns zero logits of the real map shape at once: what is left is the I/O pipeline."""

    def __init__(self, cells: tuple[int, int]) -> None:
        super().__init__()
        self.cells = cells

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], 1, *self.cells, device=x.device)


def machine() -> str:
    """CPU model, cores, Python and torch versions, and the GPU when one is used."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.SubprocessError, StopIteration):
        model = platform.processor() or "unknown"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{platform.machine()} {model}, {os.cpu_count()} cores{gpu}; Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(model: nn.Module, config: RunConfig, device: torch.device, batch_size: int) -> float:
    """Patches/s of the network alone on one random uint8 batch (best of the iterations)."""
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (batch_size, PATCH, PATCH, 3), dtype=np.uint8)
    channels_last = config.channels_last and device.type == "cuda"
    amp = config.amp and device.type == "cuda"
    x = prepare_batch(
        patches, device=device, normalisation=IMAGENET_NORMALISATION, channels_last=channels_last
    )
    model.eval()
    best = float("inf")
    with torch.inference_mode():
        for iteration in range(WARMUP_ITERATIONS + MODEL_ITERATIONS):
            _sync(device)
            start = time.perf_counter()
            with autocast(device, amp):
                torch.sigmoid(model(x).float()).mul(255).round().to(torch.uint8).cpu()
            _sync(device)
            if iteration >= WARMUP_ITERATIONS:
                best = min(best, time.perf_counter() - start)
    return batch_size / best


def sequential(
    model: nn.Module, slide_path: Path, config: RunConfig, device: torch.device, batch_size: int
) -> tuple[int, float]:
    """The baseline: read a batch, then infer it, in one thread; (patches, seconds)."""
    start = time.perf_counter()
    sampler = PatchSampler(slide_path, patch_size=PATCH, target_mpp=MPP)
    grid = sampler.grid()
    channels_last = config.channels_last and device.type == "cuda"
    model.eval()
    with torch.inference_mode():
        for first in range(0, len(grid.l0_xy), batch_size):
            patches = sampler.read(grid.l0_xy[first : first + batch_size])
            x = prepare_batch(
                patches,
                device=device,
                normalisation=IMAGENET_NORMALISATION,
                channels_last=channels_last,
            )
            with autocast(device, config.amp):
                torch.sigmoid(model(x).float()).mul(255).round().to(torch.uint8).cpu()
    _sync(device)
    return len(grid.l0_xy), time.perf_counter() - start


def grid_read(slide_path: Path, batch_size: int, tissue: TissueMask) -> tuple[int, float]:
    """Reading alone: the grid's patches in batches, one thread, no conversion or model."""
    sampler = PatchSampler(slide_path, patch_size=PATCH, target_mpp=MPP, tissue=tissue)
    l0_xy = sampler.grid().l0_xy
    clear_slide_cache()  # a fresh handle: no tile decoded yet
    start = time.perf_counter()
    for first in range(0, len(l0_xy), batch_size):
        sampler.read(l0_xy[first : first + batch_size])
    return len(l0_xy), time.perf_counter() - start


def delivery(
    fresh: FreshPaths,
    config: RunConfig,
    batch_size: int,
    tissue: TissueMask,
    readers: int,
    processes: int,
    pin: bool,
) -> tuple[int, float]:
    """The readers alone: every grid batch delivered to this process, nothing done with it
    (processes kept from an untimed first pass). (patches, seconds)"""
    sampler = PatchSampler(fresh.slide_path, patch_size=PATCH, target_mpp=MPP, tissue=tissue)
    grid = sampler.grid(min_tissue=GRID_MIN_TISSUE)
    pad_to = batch_size if pin else None

    def drain(batches: Iterator[tuple[Tensor, int]]) -> tuple[int, float]:
        start = time.perf_counter()
        count = sum(n for _batch, n in batches)
        return count, time.perf_counter() - start

    def requests() -> list[BatchRequest]:
        return batch_requests(fresh(), grid, config, batch_size, None, pad_to)

    if not processes:
        return drain(thread_batches(requests(), readers=readers, pin=pin))
    with ReaderPool(processes, pin=pin) as pool:
        drain(pool.batches(requests()))
        return drain(pool.batches(requests()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--output-stride", type=int, default=32, choices=[16, 32])
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last (CUDA only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile (CUDA only)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--readers", type=int, default=None, help="reader threads")
    parser.add_argument(
        "--reader-processes",
        type=int,
        nargs="+",
        default=[0],
        help="read in this many worker processes instead of threads (0: threads); several "
        "values: the end-to-end and reading-only figures for each",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--width", type=int, default=6144, help="synthetic slide width (px)")
    parser.add_argument("--height", type=int, default=4608, help="synthetic slide height (px)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--workdir", type=Path, default=None, help="where the slide goes")
    parser.add_argument(
        "--skip-sequential", action="store_true", help="skip the sequential baseline"
    )
    parser.add_argument(
        "--reading-only",
        action="store_true",
        help="only the reading figures (the readers' ceiling; quick on a CPU)",
    )
    parser.add_argument(
        "--openslide-only",
        action="store_true",
        help="read every patch through OpenSlide (no direct JPEG tile decoding)",
    )
    parser.add_argument(
        "--generate-only",
        action="store_true",
        help="generate the synthetic slide into --workdir and stop (to prepare it meanwhile)",
    )
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.gettempdir()) / "tumormap_bench_infer"
    workdir.mkdir(parents=True, exist_ok=True)
    slide_path = workdir / f"synthetic20x_{args.width}x{args.height}.svs"
    if not slide_path.is_file():
        start = time.perf_counter()
        partial = slide_path.with_suffix(".partial.svs")
        generate_slide(partial, seed=3, tumor=True, width=args.width, height=args.height)
        partial.replace(slide_path)  # a killed run never leaves a half-written slide behind
        print(f"generated {slide_path.name} in {time.perf_counter() - start:.1f} s")
    if args.generate_only:
        return

    if args.openslide_only:
        reader_module.DIRECT_JPEG_TILES = False  # inherited by forked reader processes
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configure_backends(device)
    config = RunConfig(
        alpha=0.4,
        beta=0.2,
        arch=args.arch,
        output_stride=args.output_stride,
        pretrained="none",
        patch_size=PATCH,
        target_mpp=MPP,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    readers = args.readers or default_readers()

    torch.manual_seed(0)
    model = build_model(config)
    cells = map_shape(model, PATCH)
    net = prepare_model(
        model, device, channels_last=config.channels_last, compile_model=config.compile
    )
    null = NullModel(cells)

    # The slide's tissue mask, as its import stores it and the inference task passes it in.
    tissue = PatchSampler(slide_path, patch_size=PATCH, target_mpp=MPP).tissue

    fresh = FreshPaths(slide_path)
    maps: list[np.ndarray] = []  # every real map made: all must be the same

    def timed(network: nn.Module, processes: int, pool: ReaderPool | None) -> Run:
        path = fresh()  # read as a new slide: no tile decoded yet
        marks: list[tuple[float, int]] = []
        start = time.perf_counter()
        result = infer_slide(
            network,
            path,
            config=config,
            normalisation=IMAGENET_NORMALISATION,
            device=device,
            batch_size=args.batch_size,
            readers=readers,
            reader_processes=processes,
            reader_pool=pool,
            tissue=tissue,
            on_progress=functools.partial(_mark, marks),
        )
        _sync(device)
        end = time.perf_counter()
        if network is net:
            maps.append(result.probs)
        return Run.from_marks(start, end, marks)

    def end_to_end(network: nn.Module, processes: int) -> Run:
        """Best of the repeats; reader processes, if any, started for each call."""
        runs = [timed(network, processes, None) for _ in range(args.repeats)]
        return min(runs, key=lambda run: run.seconds)

    def kept_readers(network: nn.Module, processes: int) -> Run:
        """Best of the repeats with reader processes kept from an untimed first call (on
        another name of the slide), as for every slide after the first of a task."""
        with open_reader_pool(processes, device) as pool:
            timed(network, processes, pool)
            runs = [timed(network, processes, pool) for _ in range(args.repeats)]
        return min(runs, key=lambda run: run.seconds)

    # Warm-up (cuDNN autotuning, compile, OpenSlide caches), not timed.
    model_only(net, config, device, args.batch_size)
    compute = model_only(net, config, device, args.batch_size)
    rows = []
    for processes in args.reader_processes:
        if not processes:
            text = f"{readers} threads"
            if not args.reading_only:
                rows.append(("end to end (`infer_slide`)", text, end_to_end(net, 0)))
            rows.append(("reading only (null model)", text, end_to_end(null, 0)))
            continue
        text = f"{processes} processes"
        if not args.reading_only:
            rows.append(
                ("end to end, readers started for the slide", text, end_to_end(net, processes))
            )
            rows.append(
                ("end to end, readers kept from the last slide", text, kept_readers(net, processes))
            )
        rows.append(
            ("reading only (null model), readers kept", text, kept_readers(null, processes))
        )
    pin = device.type == "cuda"
    delivered = []
    for processes in args.reader_processes:
        text = f"{processes} processes" if processes else f"{readers} threads"
        runs = [
            delivery(fresh, config, args.batch_size, tissue, readers, processes, pin)
            for _ in range(args.repeats)
        ]
        delivered.append((text, min(runs, key=lambda run: run[1])))
    reads = [grid_read(fresh(), args.batch_size, tissue) for _ in range(args.repeats)]
    read_patches, read_seconds = min(reads, key=lambda run: run[1])
    serial = None
    if not (args.skip_sequential or args.reading_only):
        serial = min(
            (
                sequential(net, fresh(), config, device, args.batch_size)
                for _ in range(args.repeats)
            ),
            key=lambda run: run[1],
        )

    fresh.remove()

    precision = "bf16" if config.amp and device.type == "cuda" else "fp32"
    layout = "channels-last" if config.channels_last and device.type == "cuda" else "NCHW"
    print(f"\nmachine: {machine()}")
    print(
        f"{args.arch} stride {args.output_stride}, {PATCH} px at {MPP} um/px, {precision}, "
        f"{layout}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, slide "
        f"{args.width} x {args.height} ({rows[0][2].patches} tissue patches of {cells[0]} x "
        f"{cells[1]} cells), stored tissue mask, "
        f"{'OpenSlide only' if args.openslide_only else 'direct JPEG tiles'}, "
        f"best of {args.repeats}\n"
    )
    print(
        "| measure | readers | patches | seconds | patches/s | first batch after "
        "| steady patches/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for measure, readers_text, run in rows:
        print(
            f"| {measure} | {readers_text} | {run.patches} | {run.seconds:.2f} | "
            f"{run.patches / run.seconds:,.0f} | {run.first_batch:.2f} s | {run.steady:,.0f} |"
        )
    print(
        f"| model only (random batch on device) | - | {args.batch_size} | - | {compute:,.0f} "
        "| - | - |"
    )
    for text, (patches, seconds) in delivered:
        print(
            f"| readers alone (batches delivered, nothing done with them) | {text} | {patches} "
            f"| {seconds:.2f} | {patches / seconds:,.0f} | - | - |"
        )
    print(
        f"| grid read alone (`PatchSampler.read`) | 1 thread | {read_patches} | "
        f"{read_seconds:.2f} | {read_patches / read_seconds:,.0f} | - | - |"
    )
    if serial is not None:
        print(
            f"| sequential baseline (read, then model) | 1 thread | {serial[0]} | "
            f"{serial[1]:.2f} | {serial[0] / serial[1]:,.0f} | - | - |"
        )
    if maps:
        same = all(np.array_equal(maps[0], other) for other in maps[1:])
        print(f"\n{len(maps)} maps made, identical whatever the readers: {'yes' if same else 'NO'}")
    ends = [run.patches / run.seconds for measure, _t, run in rows if measure.startswith("end")]
    if ends and device.type == "cuda" and args.arch == "resnet50":
        best = max(ends)
        verdict = "met" if best >= TARGET_GPU else "NOT met"
        print(f"\ntarget >= {TARGET_GPU:,.0f} patches/s end to end: {verdict} (best {best:,.0f})")


if __name__ == "__main__":
    main()
