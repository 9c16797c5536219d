"""Direct JPEG tile decoding: the same pixels as OpenSlide, each tile decoded once."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import slides.wsi.reader as reader_module
from common.errors import SlideUnreadableError
from slides.wsi import jpeg_tiles
from slides.wsi.jpeg_tiles import JpegTiles
from slides.wsi.reader import SlideReader
from slides.wsi.sampler import PatchSampler
from slides.wsi.synthetic import SyntheticSlide, generate_slide


@pytest.fixture
def openslide_only() -> Iterator[None]:
    reader_module.DIRECT_JPEG_TILES = False
    yield
    reader_module.DIRECT_JPEG_TILES = True


def _openslide_region(path: Path, x: int, y: int, w: int, h: int) -> np.ndarray:
    with SlideReader(path) as reader:
        rgba = reader._read_rgba((x, y), 0, (w, h))
    return np.asarray(reader_module._rgba_to_rgb(rgba))


def _tiles(path: Path) -> JpegTiles:
    with SlideReader(path) as reader:
        meta = reader.metadata
    tiles = JpegTiles.open(path, vendor=meta.vendor, size=(meta.l0_width, meta.l0_height))
    assert tiles is not None
    return tiles


# Regions inside, across tile edges, across the image border and entirely outside it.
REGIONS = [(0, 0, 224, 224), (200, 230, 300, 97), (1900, 1400, 224, 224), (-50, -20, 224, 224),
           (2040, 1530, 30, 30), (5000, 5000, 16, 16), (1, 1, 1, 1)]  # fmt: skip


@pytest.mark.parametrize("region", REGIONS)
def test_regions_match_openslide_on_a_ycbcr_slide(
    synthetic_tumor: SyntheticSlide, region: tuple[int, int, int, int]
) -> None:
    tiles = _tiles(synthetic_tumor.path)
    try:
        got = tiles.read(*region)
    finally:
        tiles.close()
    np.testing.assert_array_equal(got, _openslide_region(synthetic_tumor.path, *region))


def test_regions_match_openslide_on_a_real_aperio_slide(cmu_slide: Path) -> None:
    # Aperio: 240 px tiles, shared JPEG tables, RGB-coded JPEG, 2220 x 2967 px.
    page = tifffile.TiffFile(cmu_slide).pages.first
    assert page.jpegtables is not None and page.tilewidth == 240
    tiles = _tiles(cmu_slide)
    rng = np.random.default_rng(0)
    try:
        for x, y in rng.integers(-100, 3000, size=(25, 2)).tolist():
            got = tiles.read(x, y, 224, 224)
            np.testing.assert_array_equal(got, _openslide_region(cmu_slide, x, y, 224, 224))
    finally:
        tiles.close()


def test_patches_equal_openslide_through_the_sampler(
    synthetic_tumor: SyntheticSlide, cmu_slide: Path, openslide_only: None
) -> None:
    for path in (synthetic_tumor.path, cmu_slide):
        reader_module.DIRECT_JPEG_TILES = False
        sampler = PatchSampler(path, patch_size=224, target_mpp=0.5)
        grid = sampler.grid().l0_xy
        rng = sampler.sample_positions(64, np.random.default_rng(3))
        expected_grid, expected_random = sampler.read(grid), sampler.read(rng)
        reader_module.clear_slide_cache()
        reader_module.DIRECT_JPEG_TILES = True
        np.testing.assert_array_equal(sampler.read(grid), expected_grid)
        np.testing.assert_array_equal(sampler.read(rng), expected_random)
        with reader_module.open_slide(path) as reader:
            assert reader._tiles is not None  # the direct path was taken


def test_resized_patches_equal_openslide(tmp_path: Path, openslide_only: None) -> None:
    # A 40x slide read at 0.5 um/px: 448 px regions reduced by 2, both ways alike.
    slide = generate_slide(tmp_path / "x40.svs", seed=5, tumor=True, width=2048, height=1536,
                           mpp=0.25, objective_power=40)  # fmt: skip
    corners = np.array([[0, 0], [300, 200], [1700, 1200], [-30, 1400]])
    reader_module.DIRECT_JPEG_TILES = False
    with SlideReader(slide.path) as reader:
        expected = [reader.read_patch(tuple(c), 224, 0.5) for c in corners.tolist()]
    reader_module.DIRECT_JPEG_TILES = True
    with SlideReader(slide.path) as reader:
        got = [reader.read_patch(tuple(c), 224, 0.5) for c in corners.tolist()]
        assert reader._tiles is not None
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_each_tile_is_decoded_once_for_a_grid(synthetic_tumor: SyntheticSlide) -> None:
    tiles = _tiles(synthetic_tumor.path)
    try:
        for y in range(0, 1536, 224):
            for x in range(0, 2048, 224):
                tiles.read(x, y, 224, 224)
        # 8 x 6 tiles of 256 px cover the 2048 x 1536 slide.
        assert tiles.decoded == 8 * 6
    finally:
        tiles.close()


def test_threads_read_the_same_pixels(synthetic_tumor: SyntheticSlide) -> None:
    tiles = _tiles(synthetic_tumor.path)
    corners = np.random.default_rng(1).integers(0, 1800, size=(64, 2)).tolist()
    expected = [tiles.read(x, y, 224, 224) for x, y in corners]
    tiles.close()
    tiles = _tiles(synthetic_tumor.path)
    results: dict[int, np.ndarray] = {}

    def work(offset: int) -> None:
        for i in range(offset, len(corners), 4):
            results[i] = tiles.read(*corners[i], 224, 224)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tiles.close()
    for i, patch in enumerate(expected):
        np.testing.assert_array_equal(results[i], patch)


def test_other_formats_are_left_to_openslide(tcga_slide: Path, cmu_slide: Path) -> None:
    # JPEG 2000 tiles (TCGA), or a vendor whose layout is not plain TIFF tiles.
    assert JpegTiles.open(tcga_slide, vendor="aperio", size=(4443, 3567)) is None
    assert JpegTiles.open(cmu_slide, vendor="mirax", size=(2220, 2967)) is None
    # The wrong level-0 size: not the page OpenSlide calls level 0.
    assert JpegTiles.open(cmu_slide, vendor="aperio", size=(2220, 2966)) is None
    with SlideReader(tcga_slide) as reader:
        patch = reader.read_patch((100, 100), 224, reader.metadata.mpp)
        assert patch.shape == (224, 224, 3) and reader._tiles is None


def test_a_missing_tile_is_white(synthetic_tumor: SyntheticSlide) -> None:
    tiles = _tiles(synthetic_tumor.path)
    try:
        counts = list(tiles._counts)
        counts[0] = 0  # as a scanner that skipped an empty tile writes it
        tiles._counts = tuple(counts)
        assert (tiles.read(0, 0, 256, 256) == 255).all()
        assert not (tiles.read(256, 256, 256, 256) == 255).all()
    finally:
        tiles.close()


def test_a_corrupt_tile_is_an_unreadable_slide(
    synthetic_tumor: SyntheticSlide, tmp_path: Path
) -> None:
    copy = tmp_path / "corrupt.svs"
    shutil.copy(synthetic_tumor.path, copy)
    page = tifffile.TiffFile(copy).pages.first
    offset, count = int(page.dataoffsets[9]), int(page.databytecounts[9])
    with copy.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00" * count)  # the tile's JPEG stream is gone
    with SlideReader(copy) as reader:
        assert reader.read_patch((0, 0), 224, 0.5).shape == (224, 224, 3)  # tile 0 is fine
        with pytest.raises(SlideUnreadableError, match="corrupt.svs"):
            reader.read_patch((1 * 256 + 10, 1 * 256 + 10), 224, 0.5)  # tile 9 = row 1, col 1


def test_decoded_tiles_share_one_budget_per_process(
    synthetic_tumor: SyntheticSlide, synthetic_normal: SyntheticSlide, monkeypatch: Any
) -> None:
    tile_bytes = 256 * 256 * 3
    small = jpeg_tiles._TileCache(10 * tile_bytes)
    monkeypatch.setattr(jpeg_tiles, "_cache", small)
    first, second = _tiles(synthetic_tumor.path), _tiles(synthetic_normal.path)
    try:
        first.read(0, 0, 1024, 512)  # 4 x 2 tiles
        second.read(0, 0, 1024, 512)  # 8 more: the least recently used go
        assert small.bytes <= 10 * tile_bytes and len(small.tiles) == 10
        owners = {owner for owner, _index in small.tiles}
        assert owners == {first._owner, second._owner}
        # Evicted tiles are decoded again, and read the same.
        again = first.read(0, 0, 1024, 512)
        assert first.decoded == 16
        expected = _openslide_region(synthetic_tumor.path, 0, 0, 1024, 512)
        np.testing.assert_array_equal(again, expected)
        second.close()  # a closed slide's tiles leave the cache
        assert {owner for owner, _index in small.tiles} == {first._owner}
    finally:
        first.close()
        second.close()
    assert small.bytes == 0 and not small.tiles
