"""Benchmark: exact histogram pixel AUC vs sklearn's roc_auc_score on the same pixels.

Usage: ``python bench/bench_auc.py [--pixels 100000000] [--sklearn-pixels N] [--repeats 3]``

A random uint8 map (probability * 255) and a truth correlated with it, as a tumor map would be.
The histogram AUC is timed on all pixels (best of ``--repeats``). sklearn is timed once on the
same pixels, or, when ``--sklearn-pixels`` is smaller (or free memory is short: sklearn needs
tens of bytes per pixel for its sort and cumulative sums), on a prefix, its time extrapolated
linearly (its cost is n log n, so linear extrapolation flatters it slightly) and its AUC
compared with the histogram AUC of the same prefix.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.metrics.auc import auc_from_histograms, histograms

# This whole run peaked at ~51 bytes per pixel with sklearn on 100 M pixels (argsort indices,
# float64 copies and cumulative sums); 90 keeps a margin for other users of the machine.
SKLEARN_BYTES_PER_PIXEL = 90


def _available_bytes() -> int | None:
    try:
        with Path("/proc/meminfo").open() as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    map_u8 = rng.integers(0, 256, n, dtype=np.uint8)
    # P(tumor | value) grows with the value: AUC around 0.7, not the trivial 0.5.
    thresholds = rng.integers(0, 256, n, dtype=np.uint8)
    truth = (map_u8 // 2 + 64) > thresholds
    del thresholds
    return map_u8, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=100_000_000)
    parser.add_argument("--sklearn-pixels", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    n = args.pixels
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}")
    t0 = time.perf_counter()
    map_u8, truth = _make_data(n, args.seed)
    print(f"data: {n:,} pixels, {truth.mean():.3f} positive ({time.perf_counter() - t0:.1f} s)")

    best = float("inf")
    auc_hist = float("nan")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pos, neg = histograms(map_u8, truth)
        auc_hist = auc_from_histograms(pos, neg)
        best = min(best, time.perf_counter() - t0)
    print(f"histogram AUC: {auc_hist:.12f}  {best:.3f} s  ({n / best / 1e6:.0f} M px/s)")

    n_sk = args.sklearn_pixels or n
    avail = _available_bytes()
    if avail is not None and n_sk * SKLEARN_BYTES_PER_PIXEL > avail:
        n_sk = max(1_000_000, avail // SKLEARN_BYTES_PER_PIXEL // 1_000_000 * 1_000_000)
        print(f"free memory {avail / 2**30:.1f} GiB: sklearn measured on {n_sk:,} pixels")
    n_sk = min(n_sk, n)
    t0 = time.perf_counter()
    auc_sk = float(roc_auc_score(truth[:n_sk], map_u8[:n_sk]))
    t_sk = time.perf_counter() - t0
    if n_sk == n:
        ref = auc_hist
        t_sk_full = t_sk
        print(f"sklearn AUC:   {auc_sk:.12f}  {t_sk:.3f} s  ({n / t_sk / 1e6:.1f} M px/s)")
    else:
        pos, neg = histograms(map_u8[:n_sk], truth[:n_sk])
        ref = auc_from_histograms(pos, neg)
        t_sk_full = t_sk * n / n_sk
        print(
            f"sklearn AUC on {n_sk:,} px: {auc_sk:.12f}  {t_sk:.3f} s "
            f"({n_sk / t_sk / 1e6:.1f} M px/s); extrapolated to {n:,} px: {t_sk_full:.1f} s"
        )
        print(f"histogram AUC on the same {n_sk:,} px: {ref:.12f}")
    print(f"|difference|: {abs(auc_sk - ref):.3e}")
    print(f"speed-up: {t_sk_full / best:.0f}x")


if __name__ == "__main__":
    main()
