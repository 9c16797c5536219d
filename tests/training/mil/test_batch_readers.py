"""Grid batches read by threads and by reader processes kept across calls (CPU, real slides)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidInputError, SlideUnreadableError
from slides.wsi.sampler import GRID_MIN_TISSUE, PatchSampler
from slides.wsi.synthetic import SyntheticSlide, generate_slide
from training.mil.batch_readers import (
    BatchRequest,
    ReaderPool,
    ReaderProcessError,
    process_batches,
    read_request,
    thread_batches,
)

PATCH, MPP, BATCH = 32, 2.0, 6

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="reader processes need fork"
)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    folder = tmp_path_factory.mktemp("readers")
    return generate_slide(folder / "tumor.svs", seed=9, tumor=True, width=1500, height=1000)


@pytest.fixture(scope="module")
def requests(slide: SyntheticSlide) -> list[BatchRequest]:
    sampler = PatchSampler(slide.path, patch_size=PATCH, target_mpp=MPP)
    l0_xy = sampler.grid(min_tissue=GRID_MIN_TISSUE).l0_xy
    return [
        BatchRequest(slide.path, l0_xy[i : i + BATCH], PATCH, MPP, None, BATCH)
        for i in range(0, len(l0_xy), BATCH)
    ]


@pytest.fixture(scope="module")
def expected(slide: SyntheticSlide, requests: list[BatchRequest]) -> np.ndarray:
    sampler = PatchSampler(slide.path, patch_size=PATCH, target_mpp=MPP)
    return sampler.read(np.concatenate([r.l0_xy for r in requests]))


def _children() -> set[int]:
    return {int(child.pid) for child in multiprocessing.active_children() if child.pid}


def _collect(batches: Iterator[tuple[object, int]]) -> np.ndarray:
    parts = []
    for batch, count in batches:
        array = np.asarray(batch)
        assert array.shape[0] == BATCH  # padded to a constant batch shape
        assert not array[count:].any()  # the padding is black
        parts.append(array[:count])
    return np.concatenate(parts)


def test_read_request_pads_to_a_constant_batch(requests: list[BatchRequest]) -> None:
    last = requests[-1]
    short = BatchRequest(last.path, last.l0_xy[:2], PATCH, MPP, None, BATCH)
    tensor, count = read_request(short)
    assert count == 2 and tuple(tensor.shape) == (BATCH, PATCH, PATCH, 3)
    assert tensor[:2].float().mean() > 0 and not tensor[2:].any()


def test_threads_and_processes_read_the_same_patches_in_order(
    requests: list[BatchRequest], expected: np.ndarray
) -> None:
    assert len(requests) > 4
    before = _children()
    np.testing.assert_array_equal(
        _collect(thread_batches(requests, readers=3, pin=False)), expected
    )
    np.testing.assert_array_equal(
        _collect(process_batches(requests, processes=2, pin=False)), expected
    )
    assert _children() == before  # a one-call pool ends with its call


def test_a_pool_serves_call_after_call_with_the_same_processes(
    requests: list[BatchRequest], expected: np.ndarray
) -> None:
    before = _children()
    with ReaderPool(2, pin=False) as pool:
        assert pool.worker_pids() == []  # started by the first call
        np.testing.assert_array_equal(_collect(pool.batches(requests)), expected)
        pids = pool.worker_pids()
        assert len(pids) == 2 and set(pids) == _children() - before
        # Abandoned after one batch, then asked for other batches: nothing stale comes back.
        partial = pool.batches(requests)
        next(partial)
        partial.close()
        reversed_requests = requests[::-1]
        got = _collect(pool.batches(reversed_requests))
        np.testing.assert_array_equal(
            got,
            np.concatenate([expected[i : i + BATCH] for i in range(0, len(expected), BATCH)][::-1]),
        )
        assert pool.worker_pids() == pids
    assert not pool.usable and _children() == before


def test_one_call_at_a_time(requests: list[BatchRequest]) -> None:
    with ReaderPool(1, pin=False) as pool:
        first = pool.batches(requests)
        next(first)
        with pytest.raises(InvalidInputError, match="another call"):
            next(pool.batches(requests))
        first.close()
        assert len(list(pool.batches(requests))) == len(requests)
    with pytest.raises(InvalidInputError, match="closed"):
        next(pool.batches(requests))


def test_a_slide_error_in_a_reader_process_comes_back_intact(
    tmp_path: Path, requests: list[BatchRequest], expected: np.ndarray
) -> None:
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide" * 100)
    bad = [BatchRequest(broken, requests[0].l0_xy, PATCH, MPP, None, BATCH)]
    with pytest.raises(SlideUnreadableError) as by_thread:
        list(thread_batches(bad, readers=1, pin=False))
    with ReaderPool(2, pin=False) as pool:
        with pytest.raises(SlideUnreadableError) as by_process:
            list(pool.batches(bad))
        # The same message and details as in this process, not a worker's traceback.
        assert by_process.value.message == by_thread.value.message
        assert by_process.value.details == by_thread.value.details
        assert "broken.svs" in by_process.value.message
        # The pool is still whole and serves the next call.
        pids = pool.worker_pids()
        assert len(pids) == 2
        np.testing.assert_array_equal(_collect(pool.batches(requests)), expected)
        assert pool.worker_pids() == pids


def _wait_until_dead(pool: ReaderPool) -> None:
    deadline = time.monotonic() + 10
    while pool.usable and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_reader_killed_between_calls_is_reported_by_the_next(
    requests: list[BatchRequest],
) -> None:
    with ReaderPool(2, pin=False) as pool:
        _collect(pool.batches(requests))
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        _wait_until_dead(pool)  # no error meanwhile: nothing is waiting for that reader
        assert not pool.usable
        with pytest.raises(ReaderProcessError, match="has stopped"):
            next(pool.batches(requests))
        assert pool.worker_pids() == []  # the others were ended too


def test_a_reader_killed_during_a_call_is_a_clear_error(requests: list[BatchRequest]) -> None:
    before = _children()
    with ReaderPool(2, pin=False) as pool:
        batches = pool.batches(requests)
        next(batches)
        victim = pool.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(ReaderProcessError, match="reader process stopped") as info:
            for _ in batches:
                pass
        assert info.value.details["path"].endswith("tumor.svs")
        assert not pool.usable
    assert _children() == before


def test_a_pool_needs_a_process() -> None:
    with pytest.raises(ValueError, match="at least one process"):
        ReaderPool(0, pin=False)
