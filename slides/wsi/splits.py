"""Case-level train / validation / test splits, stratified and reproducible.

Slides of one case (one patient) share tissue, staining and scanner: a case split across the
training and test sets would leak. Splits are therefore made by case. The result depends only on
the case ids, their strata, the ratios and the seed: never on hash seeds, set order or the
order in which cases were given.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from common.errors import InvalidInputError

SPLIT_NAMES = ("train", "val", "test")
PAPER_RATIOS = (0.65, 0.15, 0.20)


def parse_ratios(text: str) -> tuple[float, float, float]:
    """Parse "0.65,0.15,0.20" (or percentages "65,15,20") into three ratios summing to 1."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInputError(
            f"Ratios must be three numbers like 0.65,0.15,0.20, not {text!r}."
        ) from None
    return validate_ratios(values)


def validate_ratios(values: list[float] | tuple[float, ...]) -> tuple[float, float, float]:
    if len(values) != 3 or any(v < 0 or not math.isfinite(v) for v in values):
        raise InvalidInputError(f"Ratios must be three non-negative numbers, not {values!r}.")
    total = sum(values)
    if total <= 0:
        raise InvalidInputError("Ratios must not all be zero.")
    if not math.isclose(total, 1.0, abs_tol=1e-6) and not math.isclose(total, 100.0, abs_tol=1e-4):
        raise InvalidInputError(f"Ratios must sum to 1 (or 100), not {total:g}.")
    return (values[0] / total, values[1] / total, values[2] / total)


def _allocate(n: int, ratios: tuple[float, float, float], carry: list[float]) -> list[int]:
    """Split n items by ratios with the largest-remainder method; `carry` accumulates each
    split's rounding debt across strata so that small strata do not all round the same way."""
    wanted = [n * r + c for r, c in zip(ratios, carry, strict=True)]
    counts = [max(0, math.floor(w)) for w in wanted]
    order = sorted(range(3), key=lambda i: (-(wanted[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    while sum(counts) > n:  # only when carry made a floor overshoot
        i = max(range(3), key=lambda j: (counts[j] - wanted[j], j))
        counts[i] -= 1
    for i in range(3):
        carry[i] = wanted[i] - counts[i]
    return counts


def split_cases(
    strata: Mapping[str, str],
    *,
    ratios: tuple[float, float, float] = PAPER_RATIOS,
    seed: int = 0,
) -> dict[str, str]:
    """Assign every case to "train", "val" or "test".

    ``strata`` maps each case id to its stratum (e.g. "lung|tumor+normal"); each stratum is
    split in the given ratios, so locations and label mixes are represented alike in every set.
    Deterministic for a given input and seed, on every machine (numpy's PCG64 generator).
    """
    ratios = validate_ratios(ratios)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for case_id, stratum in strata.items():
        by_stratum[stratum].append(case_id)
    rng = np.random.Generator(np.random.PCG64(seed))
    carry = [0.0, 0.0, 0.0]
    assignment: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        cases = sorted(by_stratum[stratum])
        order = rng.permutation(len(cases))
        counts = _allocate(len(cases), ratios, carry)
        start = 0
        for name, count in zip(SPLIT_NAMES, counts, strict=True):
            for index in order[start : start + count]:
                assignment[cases[int(index)]] = name
            start += count
    return assignment
