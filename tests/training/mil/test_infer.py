"""Whole-slide inference on small synthetic slides (CPU): geometry, validity, cancel, errors."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from shapely.geometry import MultiPolygon
from torch import Tensor, nn

from common.errors import EmptyTissueError, InvalidInputError, SlideUnreadableError
from slides.wsi.reader import open_slide
from slides.wsi.sampler import PatchSampler
from slides.wsi.synthetic import SyntheticSlide, generate_slide, truth_mask, write_aperio_tiff
from training.mil import infer as infer_module
from training.mil.checkpoint import save_checkpoint
from training.mil.config import RunConfig
from training.mil.infer import (
    InferenceCancelled,
    InferenceError,
    infer_checkpoint,
    infer_slide,
    open_reader_pool,
)
from training.mil.loop import RunCancelled
from training.mil.maps import SlideMap, map_on_slide, map_tissue, map_truth
from training.mil.model import build_model
from training.mil.presets import IMAGENET_NORMALISATION, Normalisation

# The slide is 1500 x 1000 level-0 px at 0.5 um/px; patches of 32 px at 2 um/px are 128 level-0
# px, so the grid is 12 x 8 patches and its last column overhangs the slide by 36 px.
WIDTH, HEIGHT = 1500, 1000
CONFIG = RunConfig(
    alpha=0.4,
    beta=0.2,
    arch="resnet18",
    pretrained="none",
    patch_size=32,
    target_mpp=2.0,
    output_stride=16,
    amp=False,
    channels_last=False,
)
L0_PATCH = 128
# The darkness model's cells: 8 px of a 32 px patch, i.e. 4 x 4 cells of 32 level-0 px.
DARK_CELL = 8
# Inputs reach the model unchanged (in [0, 1]) under this normalisation.
IDENTITY = Normalisation((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
CPU = torch.device("cpu")


class DarknessModel(nn.Module):
    """A fake network whose probability in each cell is the cell's mean darkness."""

    def __init__(self, cell: int = DARK_CELL) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor) -> Tensor:
        darkness = 1.0 - x.mean(dim=1, keepdim=True)
        return torch.logit(F.avg_pool2d(darkness, self.cell).clamp(1e-6, 1 - 1e-6))


class ConstantModel(nn.Module):
    """Returns a fixed tensor shape/value whatever the input (to test output checks)."""

    def __init__(self, make: Callable[[int], Tensor]) -> None:
        super().__init__()
        self.make = make

    def forward(self, x: Tensor) -> Tensor:
        return self.make(x.shape[0])


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # On the shared 2-core test machine, two OpenMP threads contending with other jobs made
    # small convolutions ~50x slower than one thread (measured: 26 ms vs 0.5 ms).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    folder = tmp_path_factory.mktemp("infer")
    return generate_slide(folder / "tumor.svs", seed=5, tumor=True, width=WIDTH, height=HEIGHT)


@pytest.fixture(scope="module")
def dark_map(slide: SyntheticSlide) -> SlideMap:
    return infer_slide(
        DarknessModel(), slide.path, config=CONFIG, normalisation=IDENTITY, device="cpu"
    )


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIG)


def grid_valid(slide: SyntheticSlide, cells: int) -> np.ndarray:
    """Cells of the sampler's grid patches, computed independently of infer.py."""
    grid = PatchSampler(slide.path, patch_size=32, target_mpp=2.0).grid()
    rows, cols = grid.shape
    out = np.zeros((rows * cells, cols * cells), dtype=bool)
    for r, c in grid.index.tolist():
        out[r * cells : (r + 1) * cells, c * cells : (c + 1) * cells] = True
    return out


def test_map_geometry_matches_the_slide(slide: SyntheticSlide, dark_map: SlideMap) -> None:
    # 4 x 4 cells per patch on a 12 x 8 grid; cells are 128 / 4 = 32 level-0 px from (0, 0).
    assert dark_map.shape == (8 * 4, 12 * 4)
    assert dark_map.m_cells_per_patch == (4, 4)
    assert dark_map.l0_cell_size == L0_PATCH / 4
    assert dark_map.l0_origin == (0.0, 0.0)
    assert dark_map.output_stride == DARK_CELL
    assert dark_map.l0_slide_size == (WIDTH, HEIGHT) and dark_map.slide_mpp == 0.5
    assert dark_map.um_per_cell == 16.0
    # Level 1 of the slide is exactly 2 um/px (downsample 4): one level-1 pixel is one pixel of
    # a patch, so the mean darkness of each 8 x 8 block of level 1 is the expected map.
    with open_slide(slide.path) as reader:
        assert reader.metadata.level_downsamples[1] == 4.0
        level1 = reader.read_region_l0((0, 0), 1, (48 * DARK_CELL, 32 * DARK_CELL))
    darkness = 1.0 - level1.astype(np.float64).mean(axis=2) / 255.0
    blocks = darkness.reshape(32, DARK_CELL, 48, DARK_CELL).mean(axis=(1, 3))
    expected = np.round(blocks * 255)
    valid = dark_map.valid
    diff = np.abs(dark_map.probs.astype(np.float64) - expected)
    # float32 in the model against float64 here: at most one level apart (rounding).
    assert diff[valid].max() <= 1
    # A shift by one cell in any direction is clearly worse: the alignment is exact.
    aligned = diff[valid].mean()
    for shift in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        shifted = np.abs(dark_map.probs.astype(np.float64) - np.roll(expected, shift, axis=(0, 1)))
        assert shifted[valid].mean() > aligned + 2


def test_background_and_border_cells_are_invalid(slide: SyntheticSlide, dark_map: SlideMap) -> None:
    expected = grid_valid(slide, 4)
    # Cells whose centre lies past the slide's border are never valid: the last grid column
    # spans x 1408..1536, its cells are centred at x = 1424, 1456, 1488 and 1520 (>= 1500);
    # the last row spans y 896..1024, its last cells are centred at y = 1008 (>= 1000).
    on_slide = map_on_slide(dark_map)
    assert on_slide[:31, :47].all()
    assert not on_slide[:, 47].any() and not on_slide[31, :].any()
    np.testing.assert_array_equal(dark_map.valid, expected & on_slide)
    np.testing.assert_array_equal(map_tissue(dark_map), dark_map.valid)
    assert 0 < dark_map.valid.mean() < 1  # glass patches exist and are not inferred
    assert (dark_map.probs[~dark_map.valid] == 0).all()
    assert (dark_map.probs[dark_map.valid] > 0).mean() > 0.99
    # Glass is pale: the few cells of inferred patches that lie on glass are the palest.
    assert np.median(dark_map.probs[dark_map.valid]) > 40


def test_truth_rasterised_on_the_map(slide: SyntheticSlide, dark_map: SlideMap) -> None:
    truth = map_truth(dark_map, MultiPolygon(slide.polygons))
    assert truth.shape == dark_map.shape and truth.dtype == np.bool_
    reference = truth_mask(slide, dark_map.l0_cell_size)
    assert reference.shape == (32, 47)
    agreement = (truth[:, :47] == reference).mean()
    assert truth.any() and agreement > 0.97
    # Synthetic tumor is darker than the rest of the tissue: the darkness map ranks it higher.
    tissue = dark_map.valid
    assert dark_map.probs[truth & tissue].mean() > dark_map.probs[~truth & tissue].mean()


def test_resnet_map_shape_determinism_and_mode(slide: SyntheticSlide, resnet: nn.Module) -> None:
    resnet.train()
    calls: list[tuple[int, int]] = []
    first = infer_slide(
        resnet,
        slide.path,
        config=CONFIG,
        normalisation=IMAGENET_NORMALISATION,
        device="cpu",
        batch_size=16,
        readers=3,
        on_progress=lambda done, total: calls.append((done, total)),
    )
    assert resnet.training  # restored
    # ResNet18 at output stride 16: a 32 px patch gives a 2 x 2 map.
    assert first.m_cells_per_patch == (2, 2) and first.shape == (8 * 2, 12 * 2)
    assert first.l0_cell_size == L0_PATCH / 2 and first.output_stride == 16
    np.testing.assert_array_equal(first.valid, grid_valid(slide, 2) & map_on_slide(first))
    total = int(grid_valid(slide, 1).sum())
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert all(done - prev <= 16 for (prev, _), (done, _) in itertools.pairwise(calls))
    second = infer_slide(
        resnet,
        slide.path,
        config=CONFIG,
        normalisation=IMAGENET_NORMALISATION,
        device=CPU,
        batch_size=16,
        readers=1,
    )
    np.testing.assert_array_equal(first.probs, second.probs)
    np.testing.assert_array_equal(first.valid, second.valid)


def test_cancel_between_batches(slide: SyntheticSlide) -> None:
    polls = iter([False, False, True])
    done: list[int] = []
    with pytest.raises(InferenceCancelled) as info:
        infer_slide(
            DarknessModel(),
            slide.path,
            config=CONFIG,
            normalisation=IDENTITY,
            device="cpu",
            batch_size=8,
            on_progress=lambda d, _total: done.append(d),
            should_stop=lambda: next(polls),
        )
    assert isinstance(info.value, RunCancelled)  # tasks catching RunCancelled catch it too
    assert info.value.code == "inference_cancelled"
    assert info.value.details["done_patches"] == 16 == done[-1]
    assert info.value.details["total_patches"] > 16


class RecordingModel(DarknessModel):
    """The darkness model, writing each forward pass into a shared event log."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def forward(self, x: Tensor) -> Tensor:
        self.events.append(f"forward {sum(e.startswith('forward') for e in self.events)}")
        return super().forward(x)


def test_next_batch_is_launched_before_the_last_is_stitched(
    slide: SyntheticSlide, dark_map: SlideMap
) -> None:
    events: list[str] = []
    result = infer_slide(
        RecordingModel(events),
        slide.path,
        config=CONFIG,
        normalisation=IDENTITY,
        device="cpu",
        batch_size=8,
        on_progress=lambda done, _total: events.append(f"stitched {done}"),
    )
    batches = -(-int(grid_valid(slide, 1).sum()) // 8)
    assert batches > infer_module.BATCHES_IN_FLIGHT
    # Batch k is stitched only once batch k + 1 has been launched (all of them, at the end).
    expected = ["forward 0"]
    done = 0
    for k in range(1, batches):
        done = min(done + 8, int(grid_valid(slide, 1).sum()))
        expected += [f"forward {k}", f"stitched {done}"]
    expected.append(f"stitched {int(grid_valid(slide, 1).sum())}")
    assert events == expected
    np.testing.assert_array_equal(result.probs, dark_map.probs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_map_matches_the_cpu_map(slide: SyntheticSlide, dark_map: SlideMap) -> None:
    # On CUDA: padded batches, page-locked asynchronous read-back, one batch in flight.
    result = infer_slide(
        DarknessModel(),
        slide.path,
        config=CONFIG,
        normalisation=IDENTITY,
        device="cuda",
        batch_size=8,
    )
    np.testing.assert_array_equal(result.valid, dark_map.valid)
    assert int(np.abs(result.probs.astype(int) - dark_map.probs.astype(int)).max()) <= 1


def test_non_finite_logits_in_a_later_batch_are_refused(slide: SyntheticSlide) -> None:
    calls = itertools.count()

    def make(n: int) -> Tensor:
        # Finite for the first two batches, NaN in the third: caught although a fourth batch
        # may already be running when the third is read back.
        return torch.full((n, 1, 2, 2), float("nan") if next(calls) == 2 else 0.0)

    stitched: list[int] = []
    with pytest.raises(InferenceError, match="non-finite"):
        infer_slide(
            ConstantModel(make),
            slide.path,
            config=CONFIG,
            normalisation=IDENTITY,
            device="cpu",
            batch_size=8,
            on_progress=lambda done, _total: stitched.append(done),
        )
    assert stitched == [8, 16]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda n: torch.full((n, 1, 2, 2), float("nan")), "non-finite"),
        (lambda n: torch.zeros(n, 2, 2, 2), "(N, 1, h, w)"),
        (lambda n: torch.zeros(n, 4), "(N, 1, h, w)"),
        (lambda n: nn.Linear(3, 1)(torch.zeros(n, 7)), "the model failed"),
    ],
)
def test_unusable_model_output(
    slide: SyntheticSlide, make: Callable[[int], Tensor], message: str
) -> None:
    with pytest.raises(InferenceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        infer_slide(
            ConstantModel(make), slide.path, config=CONFIG, normalisation=IDENTITY, device="cpu"
        )


def test_empty_slide_and_unreadable_files(tmp_path: Path) -> None:
    blank = tmp_path / "blank.svs"
    write_aperio_tiff(blank, np.full((600, 800, 3), 245, np.uint8), mpp=0.5, objective_power=20)
    with pytest.raises(EmptyTissueError):
        infer_slide(DarknessModel(), blank, config=CONFIG, normalisation=IDENTITY, device="cpu")
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide at all" * 64)
    with pytest.raises(SlideUnreadableError):
        infer_slide(DarknessModel(), broken, config=CONFIG, normalisation=IDENTITY, device="cpu")
    with pytest.raises(SlideUnreadableError):
        infer_slide(DarknessModel(), tmp_path / "absent.svs", config=CONFIG, normalisation=IDENTITY)


def test_non_ascii_file_name(slide: SyntheticSlide, dark_map: SlideMap, tmp_path: Path) -> None:
    renamed = tmp_path / "Schnitt_é_ü_日本.svs"
    shutil.copyfile(slide.path, renamed)
    result = infer_slide(
        DarknessModel(), renamed, config=CONFIG, normalisation=IDENTITY, device="cpu"
    )
    np.testing.assert_array_equal(result.probs, dark_map.probs)


def test_invalid_arguments_and_map_limit(
    slide: SyntheticSlide, monkeypatch: pytest.MonkeyPatch
) -> None:
    for kwargs in ({"batch_size": 0}, {"batch_size": 10**6}, {"readers": 0}):
        with pytest.raises(InvalidInputError):
            infer_slide(
                DarknessModel(),
                slide.path,
                config=CONFIG,
                normalisation=IDENTITY,
                device="cpu",
                **kwargs,  # type: ignore[arg-type]
            )
    # A map beyond the limit is refused before any patch is read.
    monkeypatch.setattr(infer_module, "MAX_MAP_CELLS", 100)
    reads: list[int] = []
    monkeypatch.setattr(PatchSampler, "read", lambda self, xy: reads.append(len(xy)))
    with pytest.raises(InvalidInputError, match="cells"):
        infer_slide(DarknessModel(), slide.path, config=CONFIG, normalisation=IDENTITY)
    assert reads == []


def test_slide_map_validation() -> None:
    probs = np.zeros((2, 3), np.uint8)
    common: dict[str, Any] = {
        "l0_origin": (0.0, 0.0),
        "patch_size": 32,
        "target_mpp": 2.0,
        "m_cells_per_patch": (1, 1),
        "l0_slide_size": (3, 2),
        "slide_mpp": 0.5,
    }
    with pytest.raises(InvalidInputError):
        SlideMap(probs.astype(float), np.zeros((2, 3), bool), l0_cell_size=1.0, **common)
    with pytest.raises(InvalidInputError):
        SlideMap(probs, np.zeros((3, 2), bool), l0_cell_size=1.0, **common)
    with pytest.raises(InvalidInputError):
        SlideMap(probs, np.zeros((2, 3), bool), l0_cell_size=0.0, **common)
    ok = SlideMap(probs, np.zeros((2, 3), bool), l0_cell_size=10.0, **common)
    cells = ok.m_cell_of(np.array([[0.0, 0.0], [29.9, 19.9], [10.0, 5.0]]))
    np.testing.assert_array_equal(cells, [[0, 0], [1, 2], [0, 1]])


def test_infer_checkpoint_matches_infer_slide(
    slide: SyntheticSlide, resnet: nn.Module, tmp_path: Path
) -> None:
    stats = Normalisation((0.7, 0.5, 0.6), (0.2, 0.25, 0.15))
    path = save_checkpoint(
        tmp_path / "best.pt", model=resnet, epoch=1, config=CONFIG, normalisation=stats
    )
    progress: list[tuple[int, int, int]] = []
    maps = infer_checkpoint(
        path,
        [slide.path, slide.path],
        device="cpu",
        batch_size=32,
        on_progress=lambda i, done, total: progress.append((i, done, total)),
    )
    assert len(maps) == 2
    direct = infer_slide(
        resnet, slide.path, config=CONFIG, normalisation=stats, device="cpu", batch_size=32
    )
    np.testing.assert_array_equal(maps[0].probs, direct.probs)
    np.testing.assert_array_equal(maps[1].probs, direct.probs)
    assert {i for i, _, _ in progress} == {0, 1}
    assert progress[-1][1] == progress[-1][2]


def _children() -> set[int]:
    """Process ids of this process's live multiprocessing children."""
    return {int(child.pid) for child in multiprocessing.active_children() if child.pid}


def test_reader_processes_give_the_threaded_map(slide: SyntheticSlide) -> None:
    before = _children()
    readers_seen: set[int] = set()
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        readers_seen.update(_children() - before)

    kwargs: dict[str, Any] = {
        "config": CONFIG,
        "normalisation": IDENTITY,
        "device": "cpu",
        "batch_size": 8,
    }
    threaded = infer_slide(DarknessModel(), slide.path, readers=2, **kwargs)
    processed = infer_slide(
        DarknessModel(), slide.path, reader_processes=2, on_progress=progress, **kwargs
    )
    # Read by two worker processes, which are gone once the map is returned.
    assert len(readers_seen) == 2
    assert not _children() - before
    np.testing.assert_array_equal(processed.valid, threaded.valid)
    np.testing.assert_array_equal(processed.probs, threaded.probs)
    assert processed.shape == threaded.shape and processed.l0_cell_size == threaded.l0_cell_size
    # Batches are consumed in grid order: progress grows by one batch at a time.
    total = int(grid_valid(slide, 1).sum())
    assert [done for done, _ in calls] == [min(total, 8 * (i + 1)) for i in range(len(calls))]
    assert calls[-1] == (total, total)


def test_negative_reader_processes_are_refused(slide: SyntheticSlide) -> None:
    with pytest.raises(InvalidInputError, match="reader_processes") as info:
        infer_slide(
            DarknessModel(),
            slide.path,
            config=CONFIG,
            normalisation=IDENTITY,
            device="cpu",
            reader_processes=-1,
        )
    assert info.value.details["field"] == "reader_processes"
    with pytest.raises(InvalidInputError, match="reader_processes"):
        open_reader_pool(-1)


def test_cancel_with_reader_processes_ends_them(slide: SyntheticSlide) -> None:
    before = _children()
    alive_at_cancel: list[multiprocessing.process.BaseProcess] = []
    polls = 0

    def stop_after_first_batch() -> bool:
        nonlocal polls
        polls += 1
        if polls == 2:
            alive_at_cancel.extend(
                child for child in multiprocessing.active_children() if child.pid not in before
            )
            return True
        return False

    with pytest.raises(InferenceCancelled) as info:
        infer_slide(
            DarknessModel(),
            slide.path,
            config=CONFIG,
            normalisation=IDENTITY,
            device="cpu",
            batch_size=8,
            reader_processes=2,
            should_stop=stop_after_first_batch,
        )
    assert info.value.details["done_patches"] == 8
    assert info.value.details["total_patches"] > 8
    # The readers were running when inference was cancelled, and have all ended since.
    assert len(alive_at_cancel) == 2
    assert all(not child.is_alive() for child in alive_at_cancel)
    assert not _children() - before


def test_a_reader_pool_serves_several_slides_and_ends_with_its_block(
    slide: SyntheticSlide, dark_map: SlideMap
) -> None:
    before = _children()
    kwargs: dict[str, Any] = {"config": CONFIG, "normalisation": IDENTITY, "device": "cpu"}
    with open_reader_pool(2, "cpu") as pool:
        assert pool is not None
        first = infer_slide(DarknessModel(), slide.path, batch_size=8, reader_pool=pool, **kwargs)
        readers = _children() - before
        assert len(readers) == 2
        # Another call with other batches: the same processes, the same map.
        second = infer_slide(DarknessModel(), slide.path, batch_size=5, reader_pool=pool, **kwargs)
        assert _children() - before == readers
        np.testing.assert_array_equal(first.probs, dark_map.probs)
        np.testing.assert_array_equal(second.probs, dark_map.probs)
    assert not _children() - before
    with pytest.raises(InvalidInputError, match="closed"):
        infer_slide(DarknessModel(), slide.path, reader_pool=pool, **kwargs)
    with open_reader_pool(0) as none:
        assert none is None


def test_a_cancelled_call_leaves_the_reader_pool_usable(
    slide: SyntheticSlide, dark_map: SlideMap
) -> None:
    polls = 0

    def stop_after_first_batch() -> bool:
        nonlocal polls
        polls += 1
        return polls == 2

    kwargs: dict[str, Any] = {
        "config": CONFIG,
        "normalisation": IDENTITY,
        "device": "cpu",
        "batch_size": 8,
    }
    with open_reader_pool(2, "cpu") as pool:
        with pytest.raises(InferenceCancelled):
            infer_slide(
                DarknessModel(),
                slide.path,
                reader_pool=pool,
                should_stop=stop_after_first_batch,
                **kwargs,
            )
        # The batches read ahead for the cancelled call are dropped, not served to this one.
        result = infer_slide(DarknessModel(), slide.path, reader_pool=pool, **kwargs)
    np.testing.assert_array_equal(result.probs, dark_map.probs)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _infer_in_daemon(path: Path, results: Any) -> None:
    """Runs in a daemonic child: infer with reader processes, send back the map and warnings."""
    handler = _ListHandler()
    logging.getLogger("training.mil").addHandler(handler)
    try:
        result = infer_slide(
            DarknessModel(),
            path,
            config=CONFIG,
            normalisation=IDENTITY,
            device="cpu",
            reader_processes=2,
        )
        results.put(("ok", result.probs, result.valid, handler.messages))
    except BaseException as exc:  # reported to the test process, which fails on it
        results.put(("error", repr(exc), None, handler.messages))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_daemonic_process_reads_with_threads(slide: SyntheticSlide, dark_map: SlideMap) -> None:
    # A daemonic process (a Celery prefork child) may not start reader processes.
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_infer_in_daemon, args=(slide.path, results), daemon=True)
    child.start()
    try:
        status, probs, valid, messages = results.get(timeout=120)
    finally:
        child.join(timeout=30)
    assert status == "ok", probs
    assert child.exitcode == 0
    np.testing.assert_array_equal(probs, dark_map.probs)
    np.testing.assert_array_equal(valid, dark_map.valid)
    assert any("daemonic process" in message and "threads" in message for message in messages)
