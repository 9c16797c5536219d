"""Map exports: npz archive, pyramidal TIFF overlay, GeoJSON contours, colours."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import openslide
import pytest
import tifffile
from shapely.geometry import shape

from common.errors import InvalidInputError
from slides.wsi.annotations import parse_geojson
from training.mil import export as export_module
from training.mil.export import (
    TIFF_TILE,
    colorize,
    load_map_npz,
    map_contours_geojson,
    overlay_image,
    save_map_npz,
    threshold_geometry,
    write_pyramidal_tiff,
)
from training.mil.maps import SlideMap, map_truth

CELL = 32.0  # level-0 px per map cell (224 px at 0.5 um/px on a 0.5 um/px slide, 7 cells)


def make_map(rows: int = 40, cols: int = 60, *, cut: tuple[int, int] = (0, 0)) -> SlideMap:
    """A map with a smooth gradient, an annulus (a region with a hole), a lone cell, two
    cells touching only at a corner, and an invalid (background) band. ``cut`` (x, y) makes
    the slide that many level-0 px smaller than the map, as when the grid overhangs it."""
    m_row, m_col = np.mgrid[0:rows, 0:cols]
    probs = (m_col * 255 // max(cols - 1, 1)).astype(np.uint8) // 2
    radius = np.hypot(m_row - rows / 2, m_col - cols / 3)
    probs[(radius > 4) & (radius < 9)] = 230
    probs[2, cols - 3] = 250
    probs[rows - 4, 2] = 240
    probs[rows - 3, 3] = 240
    valid = np.ones((rows, cols), dtype=bool)
    valid[:, cols - 8 : cols - 5] = False
    probs[~valid] = 0
    return SlideMap(
        probs=probs,
        valid=valid,
        l0_origin=(0.0, 0.0),
        l0_cell_size=CELL,
        patch_size=224,
        target_mpp=0.5,
        m_cells_per_patch=(7, 7),
        l0_slide_size=(int(cols * CELL) - cut[0], int(rows * CELL) - cut[1]),
        slide_mpp=0.5,
    )


# -- npz ------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path: Path) -> None:
    original = make_map()
    provenance = {"run": 7, "checkpoint": "best.pt", "slide": "tumör_1.svs", "auc": 0.91}
    path = save_map_npz(original, tmp_path / "maps" / "slide.npz", provenance=provenance)
    assert path == tmp_path / "maps" / "slide.npz"
    loaded, loaded_provenance = load_map_npz(path)
    assert loaded_provenance == provenance
    np.testing.assert_array_equal(loaded.probs, original.probs)
    np.testing.assert_array_equal(loaded.valid, original.valid)
    assert loaded.probs.dtype == np.uint8 and loaded.valid.dtype == np.bool_
    for field in (
        "l0_origin",
        "l0_cell_size",
        "patch_size",
        "target_mpp",
        "m_cells_per_patch",
        "l0_slide_size",
        "slide_mpp",
    ):
        assert getattr(loaded, field) == getattr(original, field), field
    # Overwriting is atomic too, and no temporary file is left behind.
    save_map_npz(make_map(rows=5, cols=6), path, provenance={})
    assert load_map_npz(path)[0].shape == (5, 6)
    assert sorted(p.name for p in path.parent.iterdir()) == ["slide.npz"]


def test_npz_failures(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="JSON"):
        save_map_npz(make_map(), tmp_path / "a.npz", provenance={"bad": object()})
    with pytest.raises(InvalidInputError, match="JSON"):
        save_map_npz(make_map(), tmp_path / "a.npz", provenance={"nan": math.nan})
    assert not list(tmp_path.iterdir())  # nothing written on failure
    with pytest.raises(InvalidInputError, match="not found"):
        load_map_npz(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(InvalidInputError):
        load_map_npz(junk)
    other = tmp_path / "other.npz"
    np.savez(other, format=np.asarray(99), probs=np.zeros((2, 2), np.uint8))
    with pytest.raises(InvalidInputError, match="format 99"):
        load_map_npz(other)
    partial = tmp_path / "partial.npz"
    np.savez(partial, format=np.asarray(export_module.MAP_FORMAT))
    with pytest.raises(InvalidInputError, match="not a complete map"):
        load_map_npz(partial)


# -- colours --------------------------------------------------------------------------------


def test_colorize_lut_alpha_threshold_and_limits() -> None:
    probs = np.arange(256, dtype=np.uint8).reshape(16, 16)
    valid = np.ones_like(probs, dtype=bool)
    valid[0, :4] = False
    rgba = colorize(probs, valid, colormap="inferno")
    expected = matplotlib.colormaps["inferno"](np.arange(256) / 255.0, bytes=True)
    np.testing.assert_array_equal(rgba.reshape(256, 4)[:, :3], expected[:, :3])
    assert (rgba[0, :4, 3] == 0).all() and (rgba.reshape(256, 4)[4:, 3] == 255).all()

    half = colorize(probs, valid, colormap="viridis", threshold=128, opacity=0.5)
    alpha = half.reshape(256, 4)[:, 3]
    assert (alpha[:128] == 0).all() and (alpha[128:] == round(0.5 * 255)).all()

    clipped = colorize(probs, valid, colormap="gray", vmin=100, vmax=200).reshape(256, 4)
    assert (clipped[:101, :3] == 0).all() and (clipped[200:, :3] == 255).all()
    assert (np.diff(clipped[100:201, 0].astype(int)) >= 0).all()

    for kwargs in (
        {"colormap": "no-such-map"},
        {"vmin": 200, "vmax": 100},
        {"vmin": -1},
        {"opacity": 1.5},
        {"threshold": math.nan},
    ):
        with pytest.raises(InvalidInputError):
            colorize(probs, valid, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        colorize(probs.astype(np.float32), valid)
    with pytest.raises(InvalidInputError):
        colorize(probs, valid[:, :3])


# -- pyramidal TIFF -------------------------------------------------------------------------


def test_gray_overlay_is_the_map_upsampled_to_the_slide() -> None:
    slide_map = make_map(cut=(20, 10))
    image = overlay_image(slide_map, colormap="gray", l0_per_px=16.0)
    width, height = slide_map.l0_slide_size  # 1900 x 1270
    assert image.shape == (math.ceil(height / 16), math.ceil(width / 16)) == (80, 119)
    # 32 level-0 px per cell, 16 per overlay pixel: each cell is exactly 2 x 2 pixels.
    shown = np.where(slide_map.valid, slide_map.probs, 0)
    expected = np.repeat(np.repeat(shown, 2, axis=0), 2, axis=1)[:80, :119]
    np.testing.assert_array_equal(image, expected)
    thresholded = overlay_image(slide_map, colormap="gray", threshold=200)
    assert set(np.unique(thresholded).tolist()) <= {0, 230, 240, 250}


def test_pyramidal_tiff_levels_tags_and_openslide(tmp_path: Path) -> None:
    # 320 x 400 cells of 32 level-0 px: a 12800 x 10240 px slide, an 800 x 640 px overlay.
    slide_map = make_map(rows=320, cols=400)
    rgba_path = write_pyramidal_tiff(slide_map, tmp_path / "map.tif", colormap="inferno")
    gray_path = write_pyramidal_tiff(slide_map, tmp_path / "map_gray.tif", colormap="gray")
    with tifffile.TiffFile(rgba_path) as tif:
        shapes = [page.shape for page in tif.pages]
        assert shapes == [(640, 800, 4), (320, 400, 4), (160, 200, 4)]
        for index, page in enumerate(tif.pages):
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (TIFF_TILE, TIFF_TILE)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            # 8 um/px at level 0 (0.5 um/px x 16), doubling at each level.
            x_res = page.tags["XResolution"].value
            assert x_res[0] / x_res[1] == pytest.approx(10_000 / (8.0 * 2**index))
            assert (index == 0) == (page.subfiletype == 0)
        full = tif.pages[0].asarray()
    expected = colorize(
        np.repeat(np.repeat(slide_map.probs, 2, 0), 2, 1),
        np.repeat(np.repeat(slide_map.valid, 2, 0), 2, 1),
        colormap="inferno",
    )
    np.testing.assert_array_equal(full, expected)
    assert (full[~np.repeat(np.repeat(slide_map.valid, 2, 0), 2, 1), 3] == 0).all()
    with tifffile.TiffFile(gray_path) as tif:
        assert [page.shape for page in tif.pages] == [(640, 800), (320, 400), (160, 200)]
        assert tif.pages[1].asarray()[10, 10] == tif.pages[0].asarray()[20, 20]
    # OpenSlide reads it as a generic TIFF pyramid with the overlay's physical resolution.
    with openslide.OpenSlide(rgba_path) as overlay:
        assert overlay.level_dimensions == ((800, 640), (400, 320), (200, 160))
        assert float(overlay.properties["openslide.mpp-x"]) == pytest.approx(8.0)
        pixel = np.asarray(overlay.read_region((2 * 35, 2 * 20), 0, (1, 1)))[0, 0]
        np.testing.assert_array_equal(pixel, expected[40, 70])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map_gray.tif"]


def test_overlay_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    slide_map = make_map()
    with pytest.raises(InvalidInputError):
        overlay_image(slide_map, l0_per_px=0.0)
    with pytest.raises(InvalidInputError):
        overlay_image(slide_map, slide_l0_size=(0, 100))
    monkeypatch.setattr(export_module, "MAX_TIFF_PIXELS", 1000)
    with pytest.raises(InvalidInputError, match="l0_per_px"):
        write_pyramidal_tiff(slide_map, tmp_path / "big.tif")
    assert not list(tmp_path.iterdir())


# -- GeoJSON --------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0, 60, 200, 235, 255])
def test_contours_cover_exactly_the_thresholded_cells(threshold: int) -> None:
    slide_map = make_map()
    collection = map_contours_geojson(slide_map, threshold)
    assert collection["type"] == "FeatureCollection"
    json.dumps(collection)  # serialisable as is
    mask = slide_map.valid & (slide_map.probs >= threshold)
    area = sum(shape(feature["geometry"]).area for feature in collection["features"])
    assert area == pytest.approx(mask.sum() * CELL * CELL)
    for feature in collection["features"]:
        props = feature["properties"]
        assert props["classification"]["name"] == "Tumor"
        assert props["threshold"] == threshold
        assert props["probability_threshold"] == pytest.approx(threshold / 255)
        assert props["area_mm2"] == pytest.approx(props["area_l0_px2"] * (0.5e-3) ** 2)
        assert shape(feature["geometry"]).is_valid
    # Re-read by the platform's own contour parser and rasterised back on the map: the same
    # cells, exactly (polygons follow cell edges; cell centres are well inside).
    geometry = parse_geojson(collection).tumor_geometry
    np.testing.assert_array_equal(map_truth(slide_map, geometry), mask)


def test_contours_shapes_holes_and_clipping() -> None:
    slide_map = make_map()
    geometry = threshold_geometry(slide_map, 225)
    # The annulus (with its hole), the lone cell and the two corner-touching cells.
    polygons = sorted(geometry.geoms, key=lambda p: -p.area)
    assert len(polygons) == 4
    assert len(polygons[0].interiors) == 1
    assert [p.area for p in polygons[1:]] == [CELL * CELL] * 3
    # A lone cell is a plain square: collinear vertices were removed.
    assert len(polygons[-1].exterior.coords) == 5
    # The slide ends 40 px before the map's right edge (as where the grid overhangs it): of the
    # two cells in the last columns, x 1856..1888 and 1888..1920, only x 1856..1880 remains.
    overhanging = make_map(cut=(40, 0))
    probs = overhanging.probs.copy()
    probs[5, -2:] = 255
    overhanging = dataclasses.replace(overhanging, probs=probs)
    geometry = threshold_geometry(overhanging, 255)
    assert geometry.bounds == (1856.0, 5 * CELL, 1880.0, 6 * CELL)
    assert geometry.area == 24 * CELL


def test_contours_of_a_noisy_map_are_valid_and_exact() -> None:
    # Salt-and-pepper cells: many runs sharing parts of edges, corner contacts, holes of one
    # cell. The union must stay valid and cover exactly the thresholded cells.
    rng = np.random.default_rng(3)
    base = make_map(rows=50, cols=70)
    noisy = dataclasses.replace(
        base, probs=rng.integers(0, 256, base.shape, dtype=np.int64).astype(np.uint8)
    )
    geometry = threshold_geometry(noisy, 128)
    assert geometry.is_valid
    mask = noisy.valid & (noisy.probs >= 128)
    assert geometry.area == pytest.approx(mask.sum() * CELL * CELL)
    np.testing.assert_array_equal(map_truth(noisy, geometry), mask)
    # Every vertex is a corner: no vertex lies in the middle of a straight edge.
    for polygon in geometry.geoms:
        for ring in [polygon.exterior, *polygon.interiors]:
            xy = np.asarray(ring.coords)[:-1]
            before, after = np.roll(xy, 1, axis=0), np.roll(xy, -1, axis=0)
            straight = ((before == xy) & (xy == after)).any(axis=1)
            assert not straight.any()


def test_contours_empty_and_bad_thresholds() -> None:
    slide_map = make_map()
    assert map_contours_geojson(slide_map, 255)["features"] == []
    for bad in (-1, 256, 0.5, True, "128"):
        with pytest.raises(InvalidInputError):
            map_contours_geojson(slide_map, bad)  # type: ignore[arg-type]
