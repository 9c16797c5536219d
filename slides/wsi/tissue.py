"""Tissue detection on a slide thumbnail: where patches may be sampled from.

Otsu's threshold on HSV saturation separates stained tissue from glass; near-white (glass,
holes), near-black (dust, slide edges, black ink) and pen-ink pixels are excluded first. A
morphological closing joins fragmented tissue, then specks and small holes are cleaned away.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from skimage import filters, morphology

from common.errors import InvalidInputError
from slides.wsi.reader import SlideReader

# Microns per mask pixel aimed for: 8 um is 16 level-0 px at 20x, so a 224 px patch at 0.5 um/px
# covers 14x14 mask pixels, enough to judge its tissue fraction to a few percent.
MASK_UM_PER_PX = 8.0
# Longest mask side: bounds the thumbnail read and the mask memory on the largest slides.
MAX_MASK_SIDE = 2048
# Otsu's threshold is clipped to this saturation range: below 0.05 it would call glass noise
# tissue on a blank slide; above 0.15 it would split pale tissue (frozen sections) from darker
# tissue when a slide is all tissue and has no glass mode to find.
SATURATION_MIN = 0.05
SATURATION_MAX = 0.15
# Glass and empty slide regions are brighter than this in every channel.
WHITE_MIN_CHANNEL = 215
# Black ink, dust, out-of-focus debris: darker than this in every channel.
BLACK_MAX_CHANNEL = 50
# H&E never has more green than red (both eosin and haematoxylin absorb green most), whereas
# blue, green and teal marker inks do: a green excess above this margin is ink.
INK_GREEN_OVER_RED = 12
# Closing radius: joins tissue torn by freezing artefacts, 16 um apart.
CLOSING_UM = 16.0
# Fragments smaller than a 150 um square are debris or dust, not tissue worth sampling.
MIN_OBJECT_UM2 = 150.0 * 150.0
# Holes smaller than a 100 um square (vessel lumina, fat cells, ink removed over tissue) are
# filled: a patch over them is still a tissue patch.
MAX_HOLE_UM2 = 100.0 * 100.0
# Resolution assumed when a caller gives none: the usual 20x scan.
DEFAULT_MPP = 0.5


# eq=False: masks are arrays, and equality of masks is not a meaningful operation here.
@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask of a whole slide at ``l0_per_px`` level-0 pixels per mask pixel."""

    mask: np.ndarray  # bool (H, W); True where there is tissue
    l0_per_px: float  # level-0 pixels per mask pixel
    fraction: float  # tissue fraction of the mask

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    def __getstate__(self) -> dict[str, Any]:
        # The integral image is a cache up to 8x the mask's size: rebuilt on demand rather than
        # shipped to every DataLoader worker.
        state = dict(self.__dict__)
        state.pop("_sat", None)
        return state

    def _integral(self) -> np.ndarray:
        cached: np.ndarray | None = self.__dict__.get("_sat")
        if cached is None:
            sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.float64)
            np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.float64), axis=1, out=sat[1:, 1:])
            # The dataclass is frozen; the integral image is a pure cache of ``mask``.
            object.__setattr__(self, "_sat", sat)
            cached = sat
        return cached

    def box_fractions(self, l0_xy: np.ndarray, l0_size: float) -> np.ndarray:
        """Exact tissue area fraction inside square level-0 boxes, vectorised.

        ``l0_xy`` is (N, 2) top-left corners (x, y), ``l0_size`` the box side in level-0 pixels.
        Mask pixels partly inside a box count by the area inside (bilinear interpolation of the
        integral image is exact for a piecewise-constant mask); outside the mask counts as glass.
        """
        xy = np.asarray(l0_xy, dtype=np.float64).reshape(-1, 2)
        if l0_size <= 0:
            raise InvalidInputError(f"box size must be positive, got {l0_size}")
        m_x0 = xy[:, 0] / self.l0_per_px
        m_y0 = xy[:, 1] / self.l0_per_px
        m_side = l0_size / self.l0_per_px
        sat = self._integral()
        total = (
            _interp(sat, m_x0 + m_side, m_y0 + m_side)
            - _interp(sat, m_x0, m_y0 + m_side)
            - _interp(sat, m_x0 + m_side, m_y0)
            + _interp(sat, m_x0, m_y0)
        )
        return np.clip(total / (m_side * m_side), 0.0, 1.0)

    def l0_box_fraction(self, l0_xy: tuple[float, float], l0_size: float) -> float:
        """Tissue fraction inside one square level-0 box (top-left ``l0_xy``, side ``l0_size``)."""
        return float(self.box_fractions(np.asarray([l0_xy], dtype=np.float64), l0_size)[0])

    def contains_l0(self, l0_xy: np.ndarray) -> np.ndarray:
        """Whether each level-0 point (N, 2) falls on a tissue mask pixel."""
        xy = np.asarray(l0_xy, dtype=np.float64).reshape(-1, 2)
        m_x = np.floor(xy[:, 0] / self.l0_per_px).astype(np.int64)
        m_y = np.floor(xy[:, 1] / self.l0_per_px).astype(np.int64)
        inside = (m_x >= 0) & (m_y >= 0) & (m_x < self.mask.shape[1]) & (m_y < self.mask.shape[0])
        out = np.zeros(len(xy), dtype=bool)
        out[inside] = self.mask[m_y[inside], m_x[inside]]
        return out


def _interp(sat: np.ndarray, m_x: np.ndarray, m_y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of an integral image at fractional mask coordinates."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    x = np.clip(m_x, 0.0, float(w))
    y = np.clip(m_y, 0.0, float(h))
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 1, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 1, 0))
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, w), np.minimum(y0 + 1, h)
    top = sat[y0, x0] * (1 - fx) + sat[y0, x1] * fx
    bottom = sat[y1, x0] * (1 - fx) + sat[y1, x1] * fx
    result: np.ndarray = top * (1 - fy) + bottom * fy
    return result


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] computed in integers (much faster than a full HSV conversion)."""
    c_max = rgb.max(axis=2)
    c_min = rgb.min(axis=2)
    spread = (c_max - c_min).astype(np.float32)
    out = np.zeros(c_max.shape, dtype=np.float32)
    np.divide(spread, c_max, out=out, where=c_max > 0)
    return out


def _px_area(um2: float, um_per_px: float) -> int:
    return max(1, round(um2 / (um_per_px * um_per_px)))


def compute_tissue_mask(
    rgb: np.ndarray, *, l0_per_px: float, mpp: float = DEFAULT_MPP
) -> TissueMask:
    """Detect tissue in an RGB uint8 thumbnail whose pixels span ``l0_per_px`` level-0 pixels.

    ``mpp`` is the slide's level-0 resolution, used to size the clean-up operations in microns.
    A blank image yields an all-False mask with fraction 0.
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InvalidInputError(f"expected a non-empty (H, W, 3) RGB image, got shape {rgb.shape}")
    if not (math.isfinite(l0_per_px) and l0_per_px > 0 and math.isfinite(mpp) and mpp > 0):
        raise InvalidInputError(f"l0_per_px and mpp must be positive, got {l0_per_px}, {mpp}")
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    um_per_px = l0_per_px * mpp
    r = rgb[..., 0].astype(np.int16)
    g = rgb[..., 1].astype(np.int16)
    c_min = rgb.min(axis=2)
    c_max = rgb.max(axis=2)
    excluded = (c_min >= WHITE_MIN_CHANNEL) | (c_max <= BLACK_MAX_CHANNEL)
    excluded |= g - r > INK_GREEN_OVER_RED

    saturation = _saturation(rgb)
    candidates = saturation[~excluded]
    if candidates.size == 0 or float(candidates.max()) < SATURATION_MIN:
        return _empty(rgb.shape[:2], l0_per_px)
    # Otsu over every pixel (glass included): the glass mode is what it separates tissue from.
    if float(saturation.min()) == float(saturation.max()):
        threshold = SATURATION_MIN
    else:
        threshold = float(filters.threshold_otsu(saturation, nbins=256))
    threshold = min(max(threshold, SATURATION_MIN), SATURATION_MAX)
    mask = (saturation > threshold) & ~excluded

    radius = max(1, round(CLOSING_UM / um_per_px))
    mask = morphology.closing(mask, morphology.disk(radius))
    mask = morphology.remove_small_objects(mask, max_size=_px_area(MIN_OBJECT_UM2, um_per_px))
    mask = morphology.remove_small_holes(mask, max_size=_px_area(MAX_HOLE_UM2, um_per_px))
    mask = np.ascontiguousarray(mask, dtype=bool)
    return TissueMask(mask=mask, l0_per_px=float(l0_per_px), fraction=float(mask.mean()))


def _empty(shape: tuple[int, ...], l0_per_px: float) -> TissueMask:
    return TissueMask(
        mask=np.zeros((int(shape[0]), int(shape[1])), dtype=bool),
        l0_per_px=float(l0_per_px),
        fraction=0.0,
    )


def mask_l0_per_px(width: int, height: int, mpp: float, *, max_size: int = MAX_MASK_SIDE) -> float:
    """Level-0 pixels per mask pixel: ``MASK_UM_PER_PX`` unless that exceeds ``max_size``."""
    if max_size <= 0:
        raise InvalidInputError(f"max_size must be positive, got {max_size}")
    return max(MASK_UM_PER_PX / mpp, max(width, height) / max_size, 1.0)


def load_tissue_mask_image(
    path: str | os.PathLike[str], *, l0_per_px: float, fraction: float | None = None
) -> TissueMask:
    """A tissue mask stored as an image (non-zero = tissue) at ``l0_per_px``.

    Raises InvalidInputError when the file cannot be read as an image or ``l0_per_px`` is not
    a positive number.
    """
    if not (math.isfinite(l0_per_px) and l0_per_px > 0):
        raise InvalidInputError(f"l0_per_px must be a positive number, got {l0_per_px!r}")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise InvalidInputError(f"a tissue fraction lies in [0, 1], got {fraction!r}")
    try:
        with Image.open(os.fspath(path)) as image:
            mask = _nonzero(image)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"cannot read the tissue mask {os.fspath(path)!r} ({exc})",
            details={"path": os.fspath(path)},
        ) from exc
    return TissueMask(
        mask=mask,
        l0_per_px=float(l0_per_px),
        fraction=float(mask.mean()) if fraction is None else float(fraction),
    )


def _nonzero(image: Image.Image) -> np.ndarray:
    """Where any channel of an image is non-zero (grey, bilevel, colour or palette)."""
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    values = np.asarray(image)
    if values.ndim == 3:
        if image.mode in ("LA", "RGBA", "La", "RGBa"):
            values = values[..., :-1]  # alpha says nothing about tissue
        return np.asarray(values.any(axis=2))
    return np.asarray(values != 0)


def slide_tissue_mask(reader: SlideReader, *, max_size: int = MAX_MASK_SIDE) -> TissueMask:
    """The tissue mask of an open slide, computed on a thumbnail (see :func:`mask_l0_per_px`)."""
    meta = reader.metadata
    l0_per_px = mask_l0_per_px(meta.l0_width, meta.l0_height, meta.mpp, max_size=max_size)
    thumb = reader.read_scaled(l0_per_px)
    return compute_tissue_mask(thumb, l0_per_px=l0_per_px, mpp=meta.mpp)
