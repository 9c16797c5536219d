"""Scanline rasterisation against shapely: exact cell membership and real-contour areas."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Point, Polygon, box

from common.errors import InvalidInputError
from slides.wsi import rasterize as rasterize_mod
from slides.wsi.annotations import NORMAL, read_annotations
from slides.wsi.rasterize import grid_for_bounds, rasterize

CAMELYON_FILES = [
    "Normal_001.json",
    "Tumor_001.json",
    "Tumor_039.json",
    "Tumor_047.json",
    "Tumor_091.json",
    "Tumor_105.json",
    "Tumor_107.json",
    "tumor_001.xml",
]
# Rasterised area vs polygon area: the brief's bound at cells of 16-32 level-0 px.
AREA_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def camelyon_dir(shared_data: Path) -> Path:
    d = shared_data / "annotations" / "camelyon16"
    if not d.is_dir():
        pytest.skip(f"the CAMELYON16 contours folder {d} is absent")
    return d


def _assert_matches_shapely(
    geom: shapely.Geometry, origin: tuple[float, float], cs: float, shape: tuple[int, int]
) -> np.ndarray:
    """Shapely's answer per cell centre must equal the mask, except for centres lying on the
    boundary (where inside/outside is a convention)."""
    mask = rasterize(geom, l0_origin=origin, l0_cell_size=cs, shape=shape)
    assert mask.shape == shape and mask.dtype == np.bool_
    prepared = shapely.from_wkb(shapely.to_wkb(geom))  # a copy: preparing leaves the input as is
    shapely.prepare(prepared)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    x = origin[0] + (cols + 0.5) * cs
    y = origin[1] + (rows + 0.5) * cs
    differ = mask != shapely.contains_xy(prepared, x, y)
    assert shapely.intersects_xy(geom.boundary, x[differ], y[differ]).all()
    return mask


@functools.cache
def _truth_geometry(path: Path) -> shapely.Geometry:
    a = read_annotations(path)
    return a.geometry_of(NORMAL) if a.tumor_geometry.is_empty else a.tumor_geometry


# -- synthetic shapes ---------------------------------------------------------------------------


def test_square_covers_exact_cells() -> None:
    mask = rasterize(box(10, 20, 50, 40), l0_cell_size=10, shape=(6, 8))
    expected = np.zeros((6, 8), bool)
    expected[2:4, 1:5] = True
    np.testing.assert_array_equal(mask, expected)


def test_holes_islands_and_multipolygons() -> None:
    outer = Polygon(
        [(5, 5), (95, 5), (95, 95), (5, 95)],
        [[(20, 20), (80, 20), (80, 80), (20, 80)]],
    )
    island = box(40, 40, 60, 60)  # inside the hole
    tri = Polygon([(120, 10), (190, 30), (130, 90)])
    geom = MultiPolygon([outer, island, tri])
    mask = _assert_matches_shapely(geom, (0.3, -0.7), 2.5, (40, 80))
    assert mask[int(30 / 2.5), int(30 / 2.5)] == False  # noqa: E712  in the hole
    assert mask[int(50 / 2.5), int(50 / 2.5)]  # on the island
    area = mask.sum() * 2.5**2
    assert area == pytest.approx(geom.area, rel=0.03)


@pytest.mark.parametrize("seed", range(4))
def test_random_star_polygons_match_shapely(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(20, 100, n)
    star = Polygon(np.c_[150 + radii * np.cos(angles), 120 + radii * np.sin(angles)])
    hole = Point(150, 120).buffer(12)
    geom = star.difference(hole)
    assert geom.is_valid
    _assert_matches_shapely(geom, (rng.uniform(-5, 5), rng.uniform(-5, 5)), 1.7, (150, 190))


def test_geometry_partly_outside_the_grid_is_clipped() -> None:
    geom = Polygon([(-50, -30), (70, -10), (90, 60), (-20, 80)])
    for origin, shape in [((0.0, 0.0), (10, 10)), ((10.0, 10.0), (4, 3)), ((-100, -100), (9, 9))]:
        _assert_matches_shapely(geom, origin, 8.0, shape)


def test_integer_vertices_on_cell_centres_are_consistent() -> None:
    # Vertices and edges exactly through cell centres: any choice is fine, but a horizontal
    # edge or a vertex on a centre line must not open a streak across the row.
    geom = Polygon([(0.5, 0.5), (4.5, 0.5), (4.5, 2.5), (6.5, 2.5), (6.5, 5.5), (0.5, 5.5)])
    mask = rasterize(geom, l0_cell_size=1.0, shape=(8, 10))
    assert not mask[:, 7:].any() and not mask[6:].any()
    assert mask.sum() == pytest.approx(geom.area, abs=10)


def test_empty_and_collections() -> None:
    assert not rasterize(Polygon(), l0_cell_size=1, shape=(5, 5)).any()
    assert not rasterize(MultiPolygon(), l0_cell_size=1, shape=(5, 5)).any()
    gc = GeometryCollection([box(0, 0, 2, 2), LineString([(0, 0), (5, 5)]), Point(3, 3)])
    assert rasterize(gc, l0_cell_size=1, shape=(5, 5)).sum() == 4
    assert rasterize(box(0, 0, 2, 2), l0_cell_size=1, shape=(0, 5)).shape == (0, 5)
    far = rasterize(box(100, 100, 200, 200), l0_cell_size=1, shape=(5, 5))
    assert not far.any()


def test_bad_arguments_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError):
        rasterize(box(0, 0, 1, 1), l0_cell_size=0, shape=(2, 2))
    with pytest.raises(InvalidInputError):
        rasterize(box(0, 0, 1, 1), l0_cell_size=float("nan"), shape=(2, 2))
    with pytest.raises(InvalidInputError):
        rasterize(box(0, 0, 1, 1), l0_cell_size=1, shape=(-1, 2))
    with pytest.raises(InvalidInputError, match="polygonal"):
        rasterize(Point(0, 0), l0_cell_size=1, shape=(2, 2))
    monkeypatch.setattr(rasterize_mod, "MAX_RASTER_CELLS", 100)
    with pytest.raises(InvalidInputError, match="cell size"):
        rasterize(box(0, 0, 1, 1), l0_cell_size=1, shape=(20, 20))


def test_grid_for_bounds() -> None:
    origin, shape = grid_for_bounds((33.0, 70.0, 100.0, 129.0), 16)
    assert origin == (32.0, 64.0) and shape == (5, 5)
    assert origin[0] + shape[1] * 16 >= 100 and origin[1] + shape[0] * 16 >= 129


# -- real CAMELYON16 contours -------------------------------------------------------------------


@pytest.mark.parametrize("name", CAMELYON_FILES)
@pytest.mark.parametrize("cell", [16, 32])
def test_real_contour_areas(camelyon_dir: Path, name: str, cell: int) -> None:
    geom = _truth_geometry(camelyon_dir / name)
    origin, shape = grid_for_bounds(geom.bounds, cell)
    mask = rasterize(geom, l0_origin=origin, l0_cell_size=cell, shape=shape)
    area = float(mask.sum()) * cell * cell
    assert abs(area - geom.area) / geom.area < AREA_TOLERANCE, (name, area, geom.area)


@pytest.mark.parametrize("name", ["Tumor_039.json", "Tumor_091.json", "Tumor_105.json"])
def test_real_contours_match_shapely_cell_by_cell(camelyon_dir: Path, name: str) -> None:
    geom = _truth_geometry(camelyon_dir / name)
    # Offset off the integer lattice so that no centre sits on a vertex.
    (x0, y0), shape = grid_for_bounds(geom.bounds, 48)
    _assert_matches_shapely(geom, (x0 - 0.37, y0 - 0.21), 48.0, shape)


def test_tumor_047_at_cell_16_is_fast(camelyon_dir: Path) -> None:
    geom = read_annotations(camelyon_dir / "Tumor_047.json").tumor_geometry
    origin, shape = grid_for_bounds(geom.bounds, 16)
    t0 = time.perf_counter()
    mask = rasterize(geom, l0_origin=origin, l0_cell_size=16, shape=shape)
    elapsed = time.perf_counter() - t0
    assert mask.any()
    assert elapsed < 2.0, f"rasterising Tumor_047 took {elapsed:.2f} s"  # ~0.05 s measured


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # shapely on the NaN polygon
def test_far_off_and_non_finite_coordinates() -> None:
    huge = Polygon([(-1e300, -1e300), (1e300, -1e300), (1e300, 1e300), (-1e300, 1e300)])
    assert rasterize(huge, l0_cell_size=1, shape=(3, 4)).all()
    with pytest.raises(InvalidInputError, match="non-finite"):
        rasterize(Polygon([(0, 0), (float("nan"), 1), (1, 0)]), l0_cell_size=1, shape=(2, 2))
