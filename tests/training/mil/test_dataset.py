from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import training.mil.dataset as dataset_module
from common.errors import InvalidInputError
from training.mil.config import RunConfig
from training.mil.dataset import (
    STREAM_NORMALISATION,
    STREAM_TRAIN,
    STREAM_VAL,
    SlideBagDataset,
    SlideEntry,
)

Entries = Callable[..., list[SlideEntry]]


def make_dataset(entries: list[SlideEntry], factory: Any, **kwargs: Any) -> SlideBagDataset:
    defaults: dict[str, Any] = {"patches_per_slide": 5, "seed": 1, "sampler_factory": factory}
    return SlideBagDataset(entries, **{**defaults, **kwargs})


def test_slide_entry_validation(tmp_path: Path) -> None:
    entry = SlideEntry(path=tmp_path / "a.svs", label=1)  # type: ignore[arg-type]
    assert entry.path == str(tmp_path / "a.svs") and entry.name == "a.svs"
    assert SlideEntry(path="x.svs", label=0, slide_id="TCGA-1").name == "TCGA-1"
    for label in (2, -1, True):
        with pytest.raises(InvalidInputError, match="label"):
            SlideEntry(path="x.svs", label=label)
    with pytest.raises(InvalidInputError, match="default_mpp"):
        SlideEntry(path="x.svs", label=0, default_mpp=0.0)


def test_item_structure(fake_entries: Entries, fake_factory: Any) -> None:
    ds = make_dataset(fake_entries(1, 1), fake_factory(32))
    assert len(ds) == 2 and ds.labels() == [1, 0]
    item = ds[1]
    assert set(item) == {"patches", "label", "slide_index", "l0_xy"}
    assert item["patches"].shape == (5, 32, 32, 3) and item["patches"].dtype == torch.uint8
    assert item["l0_xy"].shape == (5, 2) and item["l0_xy"].dtype == torch.int64
    assert item["label"] == 0 and item["slide_index"] == 1
    with pytest.raises(IndexError):
        ds[2]


def test_sampling_depends_on_seed_epoch_slide_and_stream_only(
    fake_entries: Entries, fake_factory: Any
) -> None:
    entries = fake_entries(2, 1)
    a = make_dataset(entries, fake_factory(32))
    b = make_dataset(entries, fake_factory(32))
    assert torch.equal(a[0]["l0_xy"], b[0]["l0_xy"])
    assert torch.equal(a[0]["patches"], b[0]["patches"])
    assert not torch.equal(a[0]["l0_xy"], a[1]["l0_xy"])
    first = a[0]["l0_xy"]
    a.set_epoch(1)
    assert not torch.equal(a[0]["l0_xy"], first)
    a.set_epoch(0)
    assert torch.equal(a[0]["l0_xy"], first)
    assert not torch.equal(make_dataset(entries, fake_factory(32), seed=2)[0]["l0_xy"], first)
    val = make_dataset(entries, fake_factory(32), stream=STREAM_VAL)
    assert not torch.equal(val[0]["l0_xy"], first)
    assert len({STREAM_TRAIN, STREAM_VAL, STREAM_NORMALISATION}) == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_order_and_content_do_not_depend_on_workers(
    fake_entries: Entries, fake_factory: Any, workers: int
) -> None:
    ds = make_dataset(fake_entries(3, 3), fake_factory(32))
    ds.set_epoch(4)
    reference = {i: ds[i]["l0_xy"] for i in range(len(ds))}
    loader = DataLoader(
        ds,
        batch_size=None,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    seen = []
    for item in loader:
        seen.append(int(item["slide_index"]))
        assert torch.equal(item["l0_xy"], reference[int(item["slide_index"])])
    assert sorted(seen) == list(range(6))
    again = DataLoader(
        ds, batch_size=None, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(0)
    )
    assert [int(item["slide_index"]) for item in again] == seen


def test_samplers_are_opened_once_per_process(
    fake_entries: Entries, fake_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = fake_factory(32)
    ds = make_dataset(fake_entries(2, 0), factory)
    ds[0]
    ds[0]
    ds[1]
    assert factory.opened == 2
    # As if this object had been forked into a loader worker: it must not reuse handles.
    real_pid = dataset_module.os.getpid()
    monkeypatch.setattr(dataset_module.os, "getpid", lambda: real_pid + 1)
    ds[0]
    assert factory.opened == 3


def test_open_samplers_are_bounded(
    fake_entries: Entries, fake_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset_module, "MAX_OPEN_SAMPLERS", 2)
    ds = make_dataset(fake_entries(4, 0), fake_factory(32), patches_per_slide=1)
    for i in range(4):
        ds[i]
    assert list(ds._samplers) == [2, 3]
    ds.close()
    assert not ds._samplers


def test_pickling_drops_open_samplers(fake_entries: Entries, fake_factory: Any) -> None:
    ds = make_dataset(fake_entries(1, 0), fake_factory(32))
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._samplers
    assert torch.equal(clone[0]["l0_xy"], ds[0]["l0_xy"])


def test_truth_maps(fake_entries: Entries, fake_factory: Any, truth_fn: Any) -> None:
    ds = make_dataset(fake_entries(1, 1), fake_factory(32), truth_fn=truth_fn)
    item = ds[0]
    assert item["truth"].shape == (5, 4, 4) and item["truth"].dtype == torch.float32
    tumor = item["l0_xy"][:, 0] < 5000
    assert torch.equal(item["truth"][:, 0, 0].bool(), tumor)
    assert not ds[1]["truth"].any()

    def bad_truth(entry: SlideEntry, l0_xy: np.ndarray, size: float) -> np.ndarray:
        return np.zeros((1, 4, 4))

    with pytest.raises(ValueError, match="truth_fn"):
        make_dataset(fake_entries(1, 0), fake_factory(32), truth_fn=bad_truth)[0]


def test_sample_patches_and_from_config(fake_entries: Entries, fake_factory: Any) -> None:
    config = RunConfig(alpha=0.2, beta=0.0, patches_per_slide=3, patch_size=32, seed=9)
    ds = SlideBagDataset.from_config(fake_entries(1, 0), config, sampler_factory=fake_factory(32))
    assert ds.patches_per_slide == 3 and ds.seed == 9
    patches, l0_xy = ds.sample_patches(0, 7, stream=STREAM_NORMALISATION)
    assert patches.shape == (7, 32, 32, 3) and l0_xy.shape == (7, 2)
    with pytest.raises(InvalidInputError):
        make_dataset(fake_entries(1, 0), fake_factory(32), patches_per_slide=0)


SAMPLER_AVAILABLE = importlib.util.find_spec("slides.wsi.sampler") is not None


@pytest.mark.skipif(not SAMPLER_AVAILABLE, reason="slides.wsi.sampler cannot be imported")
def test_real_patch_sampler_on_a_real_slide(shared_data: Path) -> None:
    slide = shared_data / "slides" / "cmu-1-small-region.svs"
    config = RunConfig(alpha=0.2, beta=0.0, patches_per_slide=6, patch_size=64, target_mpp=1.0)
    seen: list[float] = []

    def truth(entry: SlideEntry, l0_xy: np.ndarray, l0_patch_size: float) -> np.ndarray:
        seen.append(l0_patch_size)
        return np.zeros((len(l0_xy), 2, 2), dtype=np.float32)

    ds = SlideBagDataset.from_config([SlideEntry(path=str(slide), label=1)], config, truth_fn=truth)
    item = ds[0]
    assert item["patches"].shape == (6, 64, 64, 3) and item["patches"].dtype == torch.uint8
    assert item["l0_xy"].shape == (6, 2)
    assert len(torch.unique(item["l0_xy"], dim=0)) == 6  # without replacement
    # 64 px at 1 um/px on a 0.499 um/px slide spans about 128 level-0 px.
    assert seen and 120 < seen[0] < 135
    assert torch.equal(ds[0]["patches"], item["patches"])  # reproducible
    # Real patches hold tissue: not blank glass.
    assert float(item["patches"].float().mean()) < 235
    loader = DataLoader(ds, batch_size=None, num_workers=1)
    assert torch.equal(next(iter(loader))["l0_xy"], item["l0_xy"])
