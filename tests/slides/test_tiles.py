"""Coarse DeepZoom tiles cut from the overview match OpenSlide's own rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from openslide.deepzoom import DeepZoomGenerator

from slides import tiles
from slides.wsi.reader import open_slide


@pytest.mark.parametrize("level", [0, 5, 8, 10, 11])
def test_overview_tiles_match_deepzoom_generator(shared_data: Path, level: int) -> None:
    path = shared_data / "slides" / "cmu-1-small-region.svs"
    with open_slide(path) as reader:
        generator = DeepZoomGenerator(
            reader._handle(), tile_size=tiles.TILE_SIZE, overlap=tiles.TILE_OVERLAP,
            limit_bounds=tiles.LIMIT_BOUNDS,
        )  # fmt: skip
        cols, rows = generator.level_tiles[level]
        for col, row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
            ours = tiles._render_tile(generator, reader, "cmu", level, col, row)
            theirs = generator.get_tile(level, (col, row))
            assert ours.size == theirs.size
            diff = np.abs(np.asarray(ours, float) - np.asarray(theirs.convert("RGB"), float))
            # Same pixels up to resampling: a shifted or mis-scaled tile differs by tens.
            assert diff.mean() < 2.0, (level, col, row, diff.mean())


def test_fine_levels_still_come_from_openslide(shared_data: Path) -> None:
    path = shared_data / "slides" / "cmu-1-small-region.svs"
    with open_slide(path) as reader:
        generator = DeepZoomGenerator(reader._handle(), tile_size=tiles.TILE_SIZE,
                                      overlap=tiles.TILE_OVERLAP)  # fmt: skip
        top = generator.level_count - 1
        ours = tiles._render_tile(generator, reader, "cmu-fine", top, 1, 1)
        assert np.array_equal(np.asarray(ours), np.asarray(generator.get_tile(top, (1, 1))))
        assert "cmu-fine" not in tiles._overviews


def test_a_stored_overview_is_used_and_matches(shared_data: Path, tmp_path: Path) -> None:
    from PIL import Image

    from slides.services.tissue import overview_l0_per_px

    path = shared_data / "slides" / "cmu-1-small-region.svs"
    with open_slide(path) as reader:
        meta = reader.metadata
        stored = tmp_path / "overview.jpg"
        pixels = reader.read_scaled(overview_l0_per_px(meta.l0_width, meta.l0_height))
        Image.fromarray(pixels).save(stored, quality=92)
        generator = DeepZoomGenerator(reader._handle(), tile_size=tiles.TILE_SIZE,
                                      overlap=tiles.TILE_OVERLAP)  # fmt: skip
        from_file = tiles._render_tile(generator, reader, "stored", 9, 0, 0, stored)
        assert tiles._overviews["stored"].image.size == Image.open(stored).size
        theirs = np.asarray(generator.get_tile(9, (0, 0)).convert("RGB"), float)
        assert np.abs(np.asarray(from_file, float) - theirs).mean() < 2.0
        # A damaged file is ignored: the slide is read instead.
        stored.write_bytes(b"not a jpeg")
        tiles._overviews.clear()
        again = tiles._render_tile(generator, reader, "damaged", 9, 0, 0, stored)
        assert np.abs(np.asarray(again, float) - theirs).mean() < 2.0
