from __future__ import annotations

import random

import pytest

from common.errors import InvalidInputError
from slides.wsi.splits import parse_ratios, split_cases


def strata(n: int) -> dict[str, str]:
    rng = random.Random(1)
    return {
        f"CASE-{i:04d}": rng.choice(["lung|tumor", "breast|normal+tumor", "kidney|tumor"])
        for i in range(n)
    }


def test_ratios_and_every_case_assigned_once() -> None:
    cases = strata(1000)
    result = split_cases(cases, ratios=(0.65, 0.15, 0.20), seed=0)
    assert set(result) == set(cases)
    counts = {name: list(result.values()).count(name) for name in ("train", "val", "test")}
    assert abs(counts["train"] - 650) <= 2
    assert abs(counts["val"] - 150) <= 2
    assert abs(counts["test"] - 200) <= 2


def test_each_stratum_is_split_in_the_ratios() -> None:
    cases = strata(900)
    result = split_cases(cases, seed=3)
    for stratum in set(cases.values()):
        members = [c for c, s in cases.items() if s == stratum]
        train = sum(result[c] == "train" for c in members)
        assert abs(train / len(members) - 0.65) < 0.02


def test_deterministic_and_independent_of_input_order() -> None:
    cases = strata(300)
    shuffled = dict(sorted(cases.items(), key=lambda kv: hash(kv[0]) % 97))
    assert split_cases(cases, seed=5) == split_cases(shuffled, seed=5)
    assert split_cases(cases, seed=5) != split_cases(cases, seed=6)


def test_known_assignment_is_stable_across_machines() -> None:
    # PCG64 with a fixed seed gives the same permutation everywhere: pin a few assignments.
    result = split_cases({f"C{i}": "s" for i in range(20)}, seed=0)
    assert sorted(k for k, v in result.items() if v == "val") == ["C13", "C7", "C8"]
    assert sorted(k for k, v in result.items() if v == "test") == ["C1", "C17", "C4", "C5"]
    assert list(result.values()).count("train") == 13
    assert result == split_cases({f"C{i}": "s" for i in reversed(range(20))}, seed=0)


def test_small_strata_do_not_all_round_to_train() -> None:
    # 30 strata of 2 cases each: per-stratum rounding alone would put everything in train.
    cases = {f"C{i}": f"s{i // 2}" for i in range(60)}
    values = list(split_cases(cases).values())
    assert values.count("val") >= 7 and values.count("test") >= 10


def test_parse_ratios() -> None:
    assert parse_ratios("0.65,0.15,0.20") == pytest.approx((0.65, 0.15, 0.20))
    assert parse_ratios("65,15,20") == pytest.approx((0.65, 0.15, 0.20))
    for bad in ("0.5,0.5", "a,b,c", "0.7,0.2,0.2", "-0.1,0.6,0.5"):
        with pytest.raises(InvalidInputError):
            parse_ratios(bad)
