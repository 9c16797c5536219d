from __future__ import annotations

import importlib.util
import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
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


def test_slide_entry_stored_mask_validation(tmp_path: Path) -> None:
    plain = SlideEntry(path="x.svs", label=1)
    assert plain.tissue_mask_path is None and plain.tissue_l0_per_px is None
    entry = SlideEntry(
        path="x.svs",
        label=1,
        tissue_mask_path=tmp_path / "m.png",  # type: ignore[arg-type]
        tissue_l0_per_px=16.0,
    )
    assert entry.tissue_mask_path == str(tmp_path / "m.png") and entry.tissue_l0_per_px == 16.0
    # Both or neither.
    with pytest.raises(InvalidInputError, match="both its path and its l0_per_px"):
        SlideEntry(path="x.svs", label=1, tissue_mask_path="m.png")
    with pytest.raises(InvalidInputError, match="both its path and its l0_per_px") as info:
        SlideEntry(path="x.svs", label=1, tissue_l0_per_px=16.0)
    assert info.value.details["path"] == "x.svs"
    for l0_per_px in (0.0, -1.0, math.nan):
        with pytest.raises(InvalidInputError, match="tissue_l0_per_px"):
            SlideEntry(path="x.svs", label=1, tissue_mask_path="m.png", tissue_l0_per_px=l0_per_px)


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


# A small synthetic slide (1500 x 1000 level-0 px at 0.5 um/px) sampled with 32 px patches at
# 2 um/px, i.e. 128 level-0 px patches on a 64 px candidate lattice.
SYNTHETIC_CONFIG = RunConfig(
    alpha=0.2, beta=0.0, patches_per_slide=16, patch_size=32, target_mpp=2.0, seed=4
)


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slides.wsi.synthetic import generate_slide

    folder = tmp_path_factory.mktemp("dataset-synthetic")
    return generate_slide(folder / "tumor.svs", seed=5, tumor=True, width=1500, height=1000).path


@pytest.mark.skipif(not SAMPLER_AVAILABLE, reason="slides.wsi.sampler cannot be imported")
def test_stored_tissue_mask_is_used_instead_of_the_slide(
    synthetic_slide: Path, tmp_path: Path
) -> None:
    from slides.wsi.reader import SlideReader
    from slides.wsi.sampler import PatchSampler
    from slides.wsi.tissue import slide_tissue_mask

    with SlideReader(synthetic_slide) as reader:
        computed = slide_tissue_mask(reader)
    # The stored mask marks the left quarter of the slide only, glass included.
    cols = computed.shape[1] // 4
    region = np.zeros(computed.shape, dtype=bool)
    region[:, :cols] = True
    l0_region_width = cols * computed.l0_per_px
    # The slide's own tissue reaches well beyond that quarter (and misses much of it).
    assert computed.mask[:, cols:].mean() > 0.3 and computed.mask[:, :cols].mean() < 0.5
    mask_path = tmp_path / "tissue.png"
    Image.fromarray(region).save(mask_path)
    entry = SlideEntry(
        path=str(synthetic_slide),
        label=1,
        tissue_mask_path=str(mask_path),
        tissue_l0_per_px=computed.l0_per_px,
    )
    stored = SlideBagDataset.from_config([entry], SYNTHETIC_CONFIG)
    item = stored[0]
    assert item["patches"].shape == (16, 32, 32, 3) and item["patches"].dtype == torch.uint8
    corners = np.concatenate(
        [item["l0_xy"].numpy()]
        + [stored.sample_patches(0, 32, stream=STREAM_TRAIN, epoch=e)[1] for e in range(1, 4)]
    )
    # Every patch corner lies in the stored region (a patch holding >= 50% of the region's
    # tissue starts inside it), and on its stored-mask pixels.
    assert (corners[:, 0] >= 0).all() and (corners[:, 0] < l0_region_width).all()
    assert np.isin(corners[:, 0], [0, 64, 128, 192, 256]).all()
    sampler = stored._sampler(0)
    assert isinstance(sampler, PatchSampler)
    np.testing.assert_array_equal(sampler.tissue.mask, region)
    # The same slide without a stored mask samples its computed tissue, beyond the quarter.
    plain = SlideBagDataset.from_config(
        [SlideEntry(path=str(synthetic_slide), label=1)], SYNTHETIC_CONFIG
    )
    free = np.concatenate(
        [plain.sample_patches(0, 32, stream=STREAM_TRAIN, epoch=e)[1] for e in range(4)]
    )
    assert (free[:, 0] >= l0_region_width).mean() > 0.5
    # A loader worker (the entry pickled or forked) loads the stored mask as well.
    loader = DataLoader(stored, batch_size=None, num_workers=1)
    assert torch.equal(next(iter(loader))["l0_xy"], item["l0_xy"])


@pytest.mark.skipif(not SAMPLER_AVAILABLE, reason="slides.wsi.sampler cannot be imported")
@pytest.mark.parametrize("stored", ["missing", "corrupt"])
def test_unreadable_stored_tissue_mask_falls_back_to_the_slide(
    synthetic_slide: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, stored: str
) -> None:
    mask_path = tmp_path / "tissue.png"
    if stored == "corrupt":
        mask_path.write_bytes(b"not a png at all" * 32)
    entry = SlideEntry(
        path=str(synthetic_slide),
        label=1,
        slide_id="fallback-slide",
        tissue_mask_path=str(mask_path),
        tissue_l0_per_px=16.0,
    )
    with caplog.at_level(logging.WARNING, logger="training.mil.dataset"):
        item = SlideBagDataset.from_config([entry], SYNTHETIC_CONFIG)[0]
    # Sampled from the mask computed from the slide: as if no mask had been stored.
    reference = SlideBagDataset.from_config(
        [SlideEntry(path=str(synthetic_slide), label=1)], SYNTHETIC_CONFIG
    )[0]
    assert torch.equal(item["l0_xy"], reference["l0_xy"])
    assert torch.equal(item["patches"], reference["patches"])
    warnings = [
        record
        for record in caplog.records
        if record.name == "training.mil.dataset" and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "fallback-slide" in message and str(mask_path) in message
    assert "computing the tissue mask from the slide" in message
