"""A whole-slide tumor map and its geometry (numpy only: loads no torch).

:class:`SlideMap` is what inference produces and what exports, evaluation and the web layer
read; it lives apart from :mod:`training.mil.infer` so that reading a map never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely.geometry.base import BaseGeometry

from common.errors import InvalidInputError
from slides.wsi.rasterize import rasterize


@dataclass(frozen=True, eq=False)
class SlideMap:
    """A whole-slide probability map on a regular grid of cells, in level-0 coordinates.

    ``probs[m_row, m_col]`` is ``round(p * 255)``; ``valid`` is True where a tissue patch was
    inferred and the cell's centre lies on the slide (cells of glass-only patches, and cells
    past the slide's border where the grid overhangs it, are False with ``probs`` 0).
    """

    probs: np.ndarray  # uint8 (m_rows, m_cols)
    valid: np.ndarray  # bool (m_rows, m_cols)
    l0_origin: tuple[float, float]  # level-0 (x, y) of cell (0, 0)'s top-left corner
    l0_cell_size: float  # level-0 pixels per map cell
    patch_size: int  # patch side in pixels at target_mpp
    target_mpp: float  # resolution the patches were read at, um/px
    m_cells_per_patch: tuple[int, int]  # (h, w) of one patch's map
    l0_slide_size: tuple[int, int]  # (width, height) of the slide's level 0
    slide_mpp: float  # the slide's level-0 resolution, um/px

    def __post_init__(self) -> None:
        probs, valid = np.asarray(self.probs), np.asarray(self.valid)
        if probs.dtype != np.uint8 or probs.ndim != 2:
            raise InvalidInputError(
                f"a map's probs must be a 2-D uint8 array, got {probs.dtype} {probs.shape}"
            )
        if valid.dtype != np.bool_ or valid.shape != probs.shape:
            raise InvalidInputError(
                f"a map's valid mask must be bool of shape {probs.shape}, "
                f"got {valid.dtype} {valid.shape}"
            )
        if not (math.isfinite(self.l0_cell_size) and self.l0_cell_size > 0):
            raise InvalidInputError(f"l0_cell_size must be positive, got {self.l0_cell_size}")

    @property
    def shape(self) -> tuple[int, int]:
        """(m_rows, m_cols)."""
        return (int(self.probs.shape[0]), int(self.probs.shape[1]))

    @property
    def output_stride(self) -> float:
        """Patch pixels (at ``target_mpp``) per map cell: the network's effective stride."""
        return self.patch_size / self.m_cells_per_patch[0]

    @property
    def um_per_cell(self) -> float:
        """Micrometres per map cell."""
        return self.l0_cell_size * self.slide_mpp

    def m_cell_of(self, l0_xy: np.ndarray) -> np.ndarray:
        """(N, 2) int64 (m_row, m_col) of the cells holding level-0 points (x, y) (N, 2).

        Points off the map give indices outside ``[0, shape)``; callers clip or mask them.
        """
        xy = np.asarray(l0_xy, dtype=np.float64).reshape(-1, 2)
        m_col = np.floor((xy[:, 0] - self.l0_origin[0]) / self.l0_cell_size)
        m_row = np.floor((xy[:, 1] - self.l0_origin[1]) / self.l0_cell_size)
        return np.stack([m_row, m_col], axis=1).astype(np.int64)


def map_truth(slide_map: SlideMap, geometry: BaseGeometry) -> np.ndarray:
    """The contour ``geometry`` (level-0 polygons) rasterised on the map's grid: bool, a cell
    is tumor when its centre lies inside (:func:`slides.wsi.rasterize.rasterize`)."""
    return rasterize(
        geometry,
        l0_origin=slide_map.l0_origin,
        l0_cell_size=slide_map.l0_cell_size,
        shape=slide_map.shape,
    )


def map_tissue(slide_map: SlideMap) -> np.ndarray:
    """The cells evaluated "over tissue": those of inferred tissue patches (``valid``)."""
    return slide_map.valid.copy()


def map_on_slide(slide_map: SlideMap) -> np.ndarray:
    """Cells whose centre lies on the slide (the "with background" evaluation region): the
    grid's last row and column may overhang the slide's border."""
    width, height = slide_map.l0_slide_size
    rows, cols = slide_map.shape
    l0_x = slide_map.l0_origin[0] + (np.arange(cols) + 0.5) * slide_map.l0_cell_size
    l0_y = slide_map.l0_origin[1] + (np.arange(rows) + 0.5) * slide_map.l0_cell_size
    inside: np.ndarray = (l0_y < height)[:, None] & (l0_x < width)[None, :]
    return inside
