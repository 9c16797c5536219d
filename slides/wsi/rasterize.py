"""Rasterise contour geometry onto a regular grid of cells (a map's truth mask).

A cell is inside when its centre is inside the geometry. The fill is an even-odd scanline fill
done in numpy: for every cell row, the crossings of its centre line with every ring edge
(exteriors and holes alike) toggle the inside state from that crossing rightwards. For a valid
(Multi)Polygon, whose rings neither cross nor overlap, the even-odd rule gives exactly the
interior with its holes, so holes need no separate pass. The work is proportional to the number
of edge-row crossings plus the cells of the geometry's bounding box, not to vertices x rows.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from common.errors import InvalidInputError

# A bool mask of 2^30 cells is 1 GiB, plus as much again while filling: beyond what one map's
# truth may take on a worker. Whole-slide masks at level-0 resolution (~1e10 cells) must use a
# coarser cell size.
MAX_RASTER_CELLS = 1 << 30


def grid_for_bounds(
    l0_bounds: tuple[float, float, float, float], l0_cell_size: float
) -> tuple[tuple[float, float], tuple[int, int]]:
    """``(l0_origin, shape)`` of the smallest grid of ``l0_cell_size`` cells aligned on
    multiples of the cell size that covers ``l0_bounds = (min_x, min_y, max_x, max_y)``."""
    _check_cell_size(l0_cell_size)
    min_x, min_y, max_x, max_y = l0_bounds
    x0 = math.floor(min_x / l0_cell_size) * l0_cell_size
    y0 = math.floor(min_y / l0_cell_size) * l0_cell_size
    cols = max(1, math.ceil((max_x - x0) / l0_cell_size))
    rows = max(1, math.ceil((max_y - y0) / l0_cell_size))
    return (float(x0), float(y0)), (rows, cols)


def _check_cell_size(l0_cell_size: float) -> None:
    if not (isinstance(l0_cell_size, (int, float)) and math.isfinite(l0_cell_size)):
        raise InvalidInputError(f"l0_cell_size must be a finite number, got {l0_cell_size!r}")
    if l0_cell_size <= 0:
        raise InvalidInputError(f"l0_cell_size must be positive, got {l0_cell_size}")


def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    if geometry.is_empty:
        return []
    if isinstance(geometry, Polygon):
        return [geometry]
    if isinstance(geometry, MultiPolygon):
        return list(geometry.geoms)
    if geometry.geom_type == "GeometryCollection":
        out: list[Polygon] = []
        for part in shapely.get_parts(geometry):
            if isinstance(part, (Polygon, MultiPolygon)) or part.geom_type == "GeometryCollection":
                out.extend(_polygons(part))
        return out
    raise InvalidInputError(f"only polygonal geometry can be rasterised, got {geometry.geom_type}")


def rasterize(
    geometry: BaseGeometry,
    *,
    l0_origin: tuple[float, float] = (0.0, 0.0),
    l0_cell_size: float,
    shape: tuple[int, int],
) -> npt.NDArray[np.bool_]:
    """Boolean mask of the cells whose centre lies inside ``geometry``.

    ``geometry`` is a Polygon, MultiPolygon or GeometryCollection (its polygons) in level-0
    pixels, holes allowed; it should be valid (as :mod:`slides.wsi.annotations` makes it).
    Cell ``(m_row, m_col)`` covers ``l0_origin + (m_col, m_row) * l0_cell_size`` to the next
    multiple; its centre is half a cell further. ``shape`` is ``(rows, cols)``. A centre lying
    exactly on an edge belongs to the cell on the edge's right (for increasing x).
    """
    _check_cell_size(l0_cell_size)
    rows, cols = (int(shape[0]), int(shape[1]))
    if rows < 0 or cols < 0:
        raise InvalidInputError(f"shape must be non-negative, got {shape}")
    if rows * cols > MAX_RASTER_CELLS:
        raise InvalidInputError(
            f"a {rows}x{cols} mask exceeds {MAX_RASTER_CELLS} cells; use a larger cell size",
            details={"shape": [rows, cols], "max_cells": MAX_RASTER_CELLS},
        )
    out = np.zeros((rows, cols), dtype=np.bool_)
    polys = _polygons(geometry)
    if not polys or rows == 0 or cols == 0:
        return out

    rings = shapely.get_rings(np.asarray(polys, dtype=object))
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    if not np.isfinite(coords).all():
        raise InvalidInputError("the geometry has a non-finite (NaN or infinite) coordinate")
    # Cell units, shifted so cell centres sit on integers: centre of (r, c) is (u, v) = (c, r).
    u = (coords[:, 0] - l0_origin[0]) / l0_cell_size - 0.5
    v = (coords[:, 1] - l0_origin[1]) / l0_cell_size - 0.5
    # Rings are closed, so consecutive vertices of the same ring are exactly its edges.
    same = ring_idx[:-1] == ring_idx[1:]
    u0, u1 = u[:-1][same], u[1:][same]
    v0, v1 = v[:-1][same], v[1:][same]
    v_lo = np.minimum(v0, v1)
    v_hi = np.maximum(v0, v1)
    # Half-open rule v_lo <= r < v_hi: a vertex on a row is counted once by its two edges, and
    # horizontal edges cross no row.
    r_start = np.clip(np.ceil(v_lo), 0, rows).astype(np.int64)
    r_stop = np.clip(np.ceil(v_hi), 0, rows).astype(np.int64)
    n_cross = np.maximum(r_stop - r_start, 0)
    total = int(n_cross.sum())
    if total == 0:
        return out

    edge = np.repeat(np.arange(n_cross.size), n_cross)
    # Row of each crossing: r_start of its edge plus its rank within the edge.
    first = np.cumsum(n_cross) - n_cross
    r = r_start[edge] + (np.arange(total) - first[edge])
    e_u0, e_v0 = u0[edge], v0[edge]
    slope = (u1[edge] - e_u0) / (v1[edge] - e_v0)  # v1 != v0: horizontal edges have no rows
    u_cross = e_u0 + (r - e_v0) * slope
    # Centres strictly right of the crossing flip state: the first such column is floor(u) + 1.
    # Clipped before the integer cast: far-off vertices must not overflow int64.
    c = (np.floor(np.clip(u_cross, -1.0, float(cols))) + 1).astype(np.int64)
    np.clip(c, 0, cols, out=c)

    r_lo, r_hi = int(r.min()), int(r.max()) + 1
    c_lo, c_hi = int(c.min()), int(c.max())
    if c_lo >= cols:
        return out
    width = c_hi - c_lo + 1
    flat = (r - r_lo) * width + (c - c_lo)
    # Two crossings at the same cell cancel: only odd counts toggle.
    idx, counts = np.unique(flat, return_counts=True)
    toggles = np.zeros(((r_hi - r_lo) * width,), dtype=np.bool_)
    toggles[idx[(counts & 1) == 1]] = True
    inside = np.logical_xor.accumulate(toggles.reshape(r_hi - r_lo, width), axis=1)
    band_cols = min(c_hi, cols) - c_lo
    out[r_lo:r_hi, c_lo : c_lo + band_cols] = inside[:, :band_cols]
    return out
