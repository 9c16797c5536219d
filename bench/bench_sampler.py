"""Patch sampling throughput: patches/s per core for 224 px patches at 0.5 um/px (20x).

Each patch is read (one OpenSlide read at the best level, resized when the slide is 40x) and
given the CPU share of the training augmentation (random 90-degree rotation + flip of the uint8
array, made contiguous as a DataLoader would). Slides:

- the real 20x ``cmu-1-small-region.svs`` (2220 x 2967, 240 px JPEG tiles),
- a larger synthetic 20x slide and a synthetic 40x slide (448 px read, reduced by 2).

Modes, each with 1 and 2 processes (every process has its own slide handles):

- ``steady``: one training step after another on one slide (handle and tile cache warm);
- ``cold``:  every step (B = 150 patches) starts from a freshly opened slide with an empty tile
  cache, as when a step visits a slide not seen recently;
- ``naive``: the baseline, opening the slide for every single patch.

Usage: ``.venv/bin/python bench/bench_sampler.py [--seconds 4] [--workdir DIR]``. Prints a
Markdown table; figures are patches/s PER CORE (two processes: total / 2).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

import slides.wsi.reader as reader_module  # noqa: E402
from slides.wsi.reader import SlideReader, clear_slide_cache  # noqa: E402
from slides.wsi.sampler import PatchSampler  # noqa: E402
from slides.wsi.synthetic import generate_slide  # noqa: E402

REAL_SLIDE = PROJECT_ROOT.parent / "shared" / "data" / "slides" / "cmu-1-small-region.svs"
PATCH = 224
MPP = 0.5
BATCH = 150  # the paper's B
# Synthetic slide sizes: ~6 x 4.6 mm at 20x (113 Mpx, 1,700 tiles: far beyond OpenSlide's tile
# cache) and ~3 x 2.3 mm at 40x (same pixel count, 4x the pixels per patch area).
LARGE_20X = (12288, 9216)
LARGE_40X = (12288, 9216)
TARGETS = {"20x": 250.0, "40x": 150.0}


def augment(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 90-degree rotation and horizontal flip of each patch, into a new batch array."""
    out = np.empty_like(patches)
    turns = rng.integers(0, 4, size=len(patches))
    flips = rng.random(len(patches)) < 0.5
    for i, patch in enumerate(patches):
        view = np.rot90(patch, int(turns[i]))
        out[i] = view[:, ::-1] if flips[i] else view
    return out


Timing = tuple[int, float, float]  # patches, wall seconds, CPU seconds of this process


def _steady(path: Path, seconds: float, seed: int) -> Timing:
    sampler = PatchSampler(path, patch_size=PATCH, target_mpp=MPP)
    sampler.candidates()
    rng = np.random.default_rng(seed)
    augment(sampler.sample(BATCH, rng).patches, rng)  # open + warm-up, not timed
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        augment(sampler.sample(BATCH, rng).patches, rng)
        count += BATCH
    return count, time.perf_counter() - start, time.process_time() - cpu


def _cold(path: Path, seconds: float, seed: int) -> Timing:
    sampler = PatchSampler(path, patch_size=PATCH, target_mpp=MPP)
    sampler.candidates()
    rng = np.random.default_rng(seed)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        clear_slide_cache()  # drops the handle and with it OpenSlide's tile cache
        augment(sampler.sample(BATCH, rng).patches, rng)
        count += BATCH
    return count, time.perf_counter() - start, time.process_time() - cpu


def _naive(path: Path, seconds: float, seed: int) -> Timing:
    sampler = PatchSampler(path, patch_size=PATCH, target_mpp=MPP)
    rng = np.random.default_rng(seed)
    positions = sampler.sample_positions(BATCH, rng)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for x, y in positions.tolist():
            with SlideReader(path) as reader:
                patch = reader.read_patch((x, y), PATCH, MPP)
            augment(patch[None], rng)
            count += 1
    return count, time.perf_counter() - start, time.process_time() - cpu


MODES: dict[str, Callable[[Path, float, int], Timing]] = {
    "steady": _steady,
    "cold": _cold,
    "naive": _naive,
}


def _worker(args: tuple[str, str, float, int]) -> Timing:
    mode, path, seconds, seed = args
    return MODES[mode](Path(path), seconds, seed)


def per_core(mode: str, path: Path, seconds: float, processes: int) -> tuple[float, float]:
    """Patches/s per core, by wall clock and by CPU time.

    Wall clock: total patches over the slowest process's time, divided by the processes. CPU
    time: total patches over the CPU seconds the processes used, which does not depend on other
    jobs sharing the machine (on an idle machine both agree).
    """
    if processes == 1:
        results = [_worker((mode, str(path), seconds, 0))]
    else:
        # fork: each child starts with an empty handle cache (reset at fork), opens its own.
        with mp.get_context("fork").Pool(processes) as pool:
            results = pool.map(_worker, [(mode, str(path), seconds, i) for i in range(processes)])
    total = sum(count for count, _, _ in results)
    wall = total / max(elapsed for _, elapsed, _ in results) / processes
    cpu = total / sum(used for _, _, used in results)
    return wall, cpu


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = "unknown CPU"
    return (
        f"{os.cpu_count()}-core {platform.machine()} ({model}), Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per figure")
    parser.add_argument("--workdir", type=Path, default=None, help="where synthetic slides go")
    parser.add_argument(
        "--openslide-only",
        action="store_true",
        help="read every patch through OpenSlide (no direct JPEG tile decoding)",
    )
    args = parser.parse_args()
    if args.openslide_only:
        # Module state: inherited by the forked worker processes.
        reader_module.DIRECT_JPEG_TILES = False
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_sampler_"))
    workdir.mkdir(parents=True, exist_ok=True)

    slides: list[tuple[str, str, Path]] = []
    if REAL_SLIDE.is_file():
        slides.append(("20x", "cmu-1-small-region.svs (real, 2220x2967)", REAL_SLIDE))
    else:
        print(f"note: {REAL_SLIDE} is absent; benchmarking synthetic slides only")
    for power, (width, height), mpp in (("20x", LARGE_20X, 0.5), ("40x", LARGE_40X, 0.25)):
        path = workdir / f"synthetic_{power}_{width}x{height}.svs"
        if not path.exists():
            start = time.perf_counter()
            generate_slide(
                path,
                seed=1,
                tumor=True,
                width=width,
                height=height,
                mpp=mpp,
                objective_power=int(power[:-1]),
            )
            print(f"generated {path.name} in {time.perf_counter() - start:.1f} s")
        slides.append((power, f"synthetic {power}, {width}x{height}", path))

    print(f"\nmachine: {machine()}")
    how = "OpenSlide only" if args.openslide_only else "direct JPEG tiles where possible"
    print(
        f"patches/s per core, {PATCH} px at {MPP} um/px, B = {BATCH}, {args.seconds:g} s each, "
        f"{how}"
    )
    print("(wall clock / CPU time)\n")
    print("| slide | target | mode | 1 process | 2 processes, per core |")
    print("| --- | --- | --- | --- | --- |")
    for power, name, path in slides:
        for mode in MODES:
            one = per_core(mode, path, args.seconds, 1)
            two = per_core(mode, path, args.seconds, 2)
            target = f">= {TARGETS[power]:.0f}" if mode != "naive" else "baseline"
            cells = " | ".join(f"{wall:.0f} / {cpu:.0f}" for wall, cpu in (one, two))
            print(f"| {name} | {target} | {mode} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
