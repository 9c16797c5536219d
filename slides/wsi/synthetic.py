"""Procedurally generated H&E-like slides with exact tumor truth, for demos, tests and benchmarks.

A slide is an irregular piece of tissue on white glass: pink (eosin) fibrous stroma with sparse
spindle-shaped fibroblast nuclei, scattered small dark lymphocytes and a few dense lymphoid
aggregates (dark but not tumor). Tumor slides add irregular tumor regions where nuclei are
dense, large, dark, pleomorphic and the stroma is more basophilic. The tumor regions are drawn
from a boolean truth mask (``truth``, 4 um per pixel); their polygons are traced from it.

Slides are written as pyramidal tiled JPEG TIFF files with an Aperio description, so OpenSlide
opens them as vendor ``aperio`` with resolution, objective power and levels (downsample 4, 16...).

Cohorts (:func:`write_demo_cohort`) also hold ``labels.csv``, one GeoJSON file per slide
(``<slide file name>.geojson``: the tumor polygons in level-0 pixels; normal slides get an EMPTY
FeatureCollection, so every slide has an annotation file and "no tumor" is explicit), and,
optionally, ASAP XML files (``<stem>.xml``; tumor in group ``Tumor``, holes in group ``_2``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import xml.etree.ElementTree as ET
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.validation import make_valid
from skimage import measure

from common.errors import InvalidInputError

# Default level-0 size: ~2 x 1.5 mm at 0.5 um/px, 12.6 Mpx, a few seconds to make and sample.
DEFAULT_WIDTH = 4096
DEFAULT_HEIGHT = 3072
# Below this a slide holds too few patches of 224 px to be sampled meaningfully.
MIN_SIDE = 512
# Above this (per side) one slide's uint8 raster exceeds ~1.5 GiB of memory: not a demo any more.
MAX_SIDE = 32768
# Tumor truth resolution: 4 um per pixel is below a nucleus' size, so the drawn tumor boundary
# is as sharp as the tissue itself allows.
TRUTH_UM_PER_PX = 4.0
# Resolution of the smooth stain fields (stroma texture, tumor basophilia, tissue edge).
FIELD_UM_PER_PX = 2.0
# Tumor share of the tissue on tumor slides, drawn uniformly in this range (the brief: 5-80%).
TUMOR_FRACTION_RANGE = (0.08, 0.75)
# The tumor share the generator guarantees (the brief's 5-80%), and the rounds it may take to
# hit it after the clean-up below.
TUMOR_FRACTION_BOUNDS = (0.05, 0.80)
_FRACTION_ROUNDS = 6
# Tumor islands smaller than a 40 um square are dropped before drawing: a few cells are not a
# region a pathologist would outline, and they would only add tiny polygons.
MIN_TUMOR_ISLAND_UM2 = 40.0 * 40.0
# Polygons are simplified by this many truth pixels: removes the staircase of the raster while
# staying within half a truth pixel of the drawn regions.
SIMPLIFY_TRUTH_PX = 0.5
# Rows rendered at once: bounds the float temporaries (about 30 bytes per pixel) to ~0.5 GiB
# per band even on 32k-wide slides.
BAND_ROWS = 512
RENDER_BYTES_PER_PX = 30
# Bands render in parallel within this much memory for their temporaries (8 bands of a
# 32k-wide slide; any number of a 4k-wide one).
RENDER_TEMP_BYTES = 4 * 1024**3
JPEG_QUALITY = 80
# Pyramid levels are added (x4 each) while the level is at least this long on its longer side.
MIN_LEVEL_SIDE = 256
LOCATIONS = ("breast", "kidney", "lung")

# Optical densities per unit stain (R, G, B): haematoxylin as in Ruifrok & Johnston; eosin made
# pinker than their pure-dye vector, as eosin looks on real slides (counterstain, mounting medium).
_H_OD = np.array([0.650, 0.704, 0.286], dtype=np.float64)
_E_OD = np.array([0.160, 0.850, 0.450], dtype=np.float64)
# Stain amounts are quantised to uint8 with this many steps per unit before the colour lookup.
_STAIN_STEPS = 160.0
_LN10 = math.log(10.0)

Label = Literal["tumor", "normal"]


@dataclass(frozen=True, eq=False)
class SyntheticSlide:
    """A generated slide and its exact truth."""

    path: Path
    label: Label
    case_id: str
    location: str
    tumor_fraction: float  # tumor area / tissue area (0 on normal slides)
    polygons: list[Polygon]  # tumor regions, level-0 pixel coordinates (x, y)
    truth_l0_per_px: float
    truth: np.ndarray  # bool (h, w): tumor, at truth_l0_per_px level-0 pixels per pixel
    tissue: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    l0_width: int = 0
    l0_height: int = 0
    mpp: float = 0.5


@dataclass(frozen=True)
class _NucleusKind:
    """Shape and stain of one population of nuclei, in microns."""

    long_um: tuple[float, float]  # semi-major axis range
    aspect: tuple[float, float]  # minor/major ratio range
    intensity: tuple[float, float]  # haematoxylin amount at the centre
    irregularity: tuple[float, float]  # amplitude of outline wobble
    chromatin: float  # granular texture depth


_FIBROBLAST = _NucleusKind((3.5, 5.5), (0.22, 0.4), (0.45, 0.65), (0.0, 0.05), 0.1)
_LYMPHOCYTE = _NucleusKind((2.2, 3.0), (0.85, 1.0), (0.85, 1.05), (0.0, 0.04), 0.1)
_TUMOR = _NucleusKind((4.0, 7.0), (0.55, 0.95), (0.75, 1.1), (0.06, 0.2), 0.35)
# Nuclei per square micron, per population and region.
_DENSITY = {
    "fibroblast_normal": 1 / 700,
    "fibroblast_tumor": 1 / 2000,
    "lymphocyte_normal": 1 / 1600,
    "lymphocyte_tumor": 1 / 2500,
    "lymphocyte_aggregate": 1 / 45,
    "tumor": 1 / 150,
}
# Smoothing wider than this many pixels is done on a grid coarser by sigma / this (see
# _smooth_noise): 4 cells per sigma keep the upsampled noise visually identical.
_NOISE_SIGMA_PER_CELL = 4.0
# Stamp bank size per population: enough variety that no two neighbours look alike.
_BANK_SIZE = 48


# -- smooth random fields ----------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: Any) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to zero mean and unit variance.

    Wide isotropic filters run on a coarser grid and are upsampled bilinearly: the result is
    band-limited anyway, and a 100-tap filter over millions of pixels would dominate generation.
    """
    sigmas = tuple(float(v) for v in np.broadcast_to(np.asarray(sigma, dtype=float), (2,)))
    factor = int(min(sigmas) // _NOISE_SIGMA_PER_CELL)
    if factor >= 2:
        small_shape = (math.ceil(shape[0] / factor) + 1, math.ceil(shape[1] / factor) + 1)
        small = ndimage.gaussian_filter(
            rng.standard_normal(small_shape).astype(np.float32), [v / factor for v in sigmas]
        )
        image = Image.fromarray(small, mode="F")
        box = (0.0, 0.0, shape[1] / factor, shape[0] / factor)
        noise = np.asarray(
            image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR, box=box),
            dtype=np.float32,
        )
    else:
        noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigmas)
    std = float(noise.std())
    return (noise - float(noise.mean())) / (std if std > 0 else 1.0)


def _tissue_shape(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """An irregular blob (plus the odd fragment) away from the borders: tissue on glass."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w * (0.5 + rng.uniform(-0.04, 0.04))
    cy = h * (0.5 + rng.uniform(-0.04, 0.04))
    rx = w * rng.uniform(0.34, 0.42)
    ry = h * rng.uniform(0.34, 0.42)
    level = 1.0 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2
    level += 0.45 * _smooth_noise(rng, shape, 0.07 * min(h, w))
    level += 0.12 * _smooth_noise(rng, shape, 0.015 * min(h, w))
    tissue = level > 0
    margin_y, margin_x = max(2, h // 25), max(2, w // 25)
    tissue[:margin_y] = tissue[-margin_y:] = False
    tissue[:, :margin_x] = tissue[:, -margin_x:] = False
    labels, count = ndimage.label(tissue)
    if count > 1:
        sizes = ndimage.sum_labels(tissue, labels, index=np.arange(1, count + 1))
        # Keep the main piece and fragments of at least 2% of it: real sections shed pieces.
        keep = np.flatnonzero(sizes >= 0.02 * sizes.max()) + 1
        tissue = np.isin(labels, keep)
    filled: np.ndarray = ndimage.binary_fill_holes(tissue)
    return filled


def _tumor_shape(
    rng: np.random.Generator, tissue: np.ndarray, target: float, min_island_px: int
) -> np.ndarray:
    """Irregular tumor regions inside the tissue covering about ``target`` of it (always within
    ``TUMOR_FRACTION_BOUNDS``, whatever the clean-up of small islands removes)."""
    h, w = tissue.shape
    field_ = _smooth_noise(rng, (h, w), 0.06 * min(h, w)) + 0.35 * _smooth_noise(
        rng, (h, w), 0.02 * min(h, w)
    )
    inside = field_[tissue]
    tissue_px = max(1, int(tissue.sum()))
    low, high = TUMOR_FRACTION_BOUNDS
    quantile = target
    tumor = np.zeros_like(tissue)
    # Dropping islands shrinks the tumor, filling holes grows it: correct the quantile until the
    # realised fraction is in bounds (two or three rounds at most in practice).
    for _ in range(_FRACTION_ROUNDS):
        threshold = float(np.quantile(inside, 1.0 - min(max(quantile, 0.0), 1.0)))
        tumor = (field_ > threshold) & tissue
        tumor = _drop_small(tumor, min_island_px)
        # Small holes inside tumor are filled for the same reason small islands are dropped.
        holes = ndimage.binary_fill_holes(tumor) & ~tumor
        tumor |= _drop_small(holes, min_island_px, invert=True) & tissue
        realised = float(tumor.sum()) / tissue_px
        if low <= realised <= high:
            break
        quantile *= target / max(realised, 1e-3)
    return tumor


def _drop_small(mask: np.ndarray, min_px: int, *, invert: bool = False) -> np.ndarray:
    """Components of ``mask`` of at least ``min_px`` pixels (or, with ``invert``, the others)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask.copy()
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    big = np.concatenate([[False], sizes >= min_px])
    small = np.concatenate([[False], sizes < min_px])
    result: np.ndarray = (small if invert else big)[labels]
    return result


# -- nuclei ----------------------------------------------------------------------------------


def _stamp_bank(
    rng: np.random.Generator, kind: _NucleusKind, mpp: float, count: int = _BANK_SIZE
) -> np.ndarray:
    """``count`` nucleus stamps (count, S, S) uint8: haematoxylin x _STAIN_STEPS, soft edges."""
    max_radius_px = kind.long_um[1] * (1.0 + kind.irregularity[1]) / mpp
    size = math.ceil(2 * max_radius_px + 3)
    half = (size - 1) / 2.0
    dy, dx = np.mgrid[0:size, 0:size].astype(np.float32) - half
    a = rng.uniform(*kind.long_um, size=count)[:, None, None] / mpp
    b = a * rng.uniform(*kind.aspect, size=count)[:, None, None]
    theta = rng.uniform(0, np.pi, size=count)[:, None, None]
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    phi = np.arctan2(v / b, u / a)
    edge = np.ones_like(rho)
    irregularity = rng.uniform(*kind.irregularity, size=count)[:, None, None]
    for harmonic in (2, 3, 5):
        phase = rng.uniform(0, 2 * np.pi, size=count)[:, None, None]
        weight = rng.uniform(0.3, 1.0, size=count)[:, None, None]
        edge += irregularity * weight * np.cos(harmonic * phi + phase)
    # Soft edge one pixel wide (in units of the minor axis), like a focused 20x scan.
    coverage = np.clip((edge - rho) * b + 0.5, 0.0, 1.0)
    intensity = rng.uniform(*kind.intensity, size=count)[:, None, None]
    chromatin = 1.0 - kind.chromatin * rng.random((count, size, size), dtype=np.float32)
    # Dense chromatin rims: nuclear membranes look darker than the nucleoplasm.
    rim = 1.0 + 0.25 * np.clip(rho / np.maximum(edge, 1e-3) - 0.6, 0.0, 0.4) / 0.4
    amount = coverage * intensity * chromatin * rim
    return np.clip(amount * _STAIN_STEPS, 0, 255).astype(np.uint8)


def _place(
    rng: np.random.Generator,
    region: np.ndarray,
    region_l0_per_px: float,
    density_px: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Poisson-distributed nucleus centres (N, 2) (y, x) in level-0 pixels inside ``region``."""
    h, w = shape
    expected = density_px * float(region.sum()) * region_l0_per_px**2
    if expected <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    # Draw over the whole slide at the region's density and keep those that fall in the region.
    total = rng.poisson(expected * region.size / max(1.0, float(region.sum())))
    ys = rng.integers(0, h, size=total)
    xs = rng.integers(0, w, size=total)
    ty = np.minimum((ys / region_l0_per_px).astype(np.int64), region.shape[0] - 1)
    tx = np.minimum((xs / region_l0_per_px).astype(np.int64), region.shape[1] - 1)
    keep = region[ty, tx]
    return np.stack([ys[keep], xs[keep]], axis=1)


# -- rendering -------------------------------------------------------------------------------


def _stain_lut(rng: np.random.Generator) -> np.ndarray:
    """(256 * 256, 3) uint8: RGB for each (eosin, haematoxylin) quantised amount pair.

    Beer-Lambert with slightly jittered stain vectors: every slide's stain differs a little, as
    it does between labs; the lookup avoids an exp per pixel.
    """
    h_od = _H_OD * rng.uniform(0.9, 1.1, size=3)
    e_od = _E_OD * rng.uniform(0.9, 1.1, size=3)
    amounts = np.arange(256, dtype=np.float64) / _STAIN_STEPS
    od = amounts[:, None, None] * e_od[None, None, :] + amounts[None, :, None] * h_od[None, None, :]
    # Glass is not perfectly white: a faint grey floor.
    rgb = 255.0 * np.exp(-_LN10 * (od + 0.012))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(-1, 3)


def _upsample(field_: np.ndarray, factor: float, l0_y0: int, l0_y1: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a float32 field to level-0 rows [l0_y0, l0_y1) (seamless per band)."""
    image = Image.fromarray(np.ascontiguousarray(field_, dtype=np.float32), mode="F")
    box = (0.0, l0_y0 / factor, width / factor, l0_y1 / factor)
    band = image.resize((width, l0_y1 - l0_y0), Image.Resampling.BILINEAR, box=box)
    return np.asarray(band, dtype=np.float32)


def _render(
    rng: np.random.Generator,
    shape: tuple[int, int],
    mpp: float,
    tissue_t: np.ndarray,
    tumor_t: np.ndarray,
    truth_l0_per_px: float,
) -> np.ndarray:
    """The level-0 RGB raster."""
    h, w = shape
    field_l0_per_px = truth_l0_per_px / 2.0
    fh, fw = math.ceil(h / field_l0_per_px), math.ceil(w / field_l0_per_px)
    # Smooth fields at FIELD_UM_PER_PX: tissue edge, tumor softness, stroma texture and fibres.
    tissue_f = _smooth_edges(tissue_t, (fh, fw), sharpen=True)
    tumor_f = _smooth_edges(tumor_t, (fh, fw), sharpen=False)
    blotch = _smooth_noise(rng, (fh, fw), 20.0)
    fibre_h = _smooth_noise(rng, (fh, fw), (0.6, 5.0))
    fibre_v = _smooth_noise(rng, (fh, fw), (5.0, 0.6))
    mix = 1.0 / (1.0 + np.exp(-2.0 * _smooth_noise(rng, (fh, fw), 30.0)))
    fibres = mix * fibre_h + (1.0 - mix) * fibre_v
    # Loose stroma has gaps between fibres: where fibres are weak, little eosin.
    eosin = tissue_f * np.clip(0.24 + 0.04 * blotch + 0.06 * fibres - 0.05 * tumor_f, 0.03, None)
    haema = tissue_f * (0.04 + 0.12 * tumor_f + 0.015 * blotch.clip(0, None))

    # Nuclei: a padded uint8 haematoxylin canvas, max-composited stamps.
    regions = _nucleus_regions(rng, tissue_t, tumor_t)
    banks = {
        "fibroblast": _stamp_bank(rng, _FIBROBLAST, mpp),
        "lymphocyte": _stamp_bank(rng, _LYMPHOCYTE, mpp),
        "tumor": _stamp_bank(rng, _TUMOR, mpp),
    }
    pad = max(bank.shape[1] for bank in banks.values())
    nuclei = np.zeros((h + 2 * pad, w + 2 * pad), dtype=np.uint8)
    px_area = mpp * mpp
    for key, region in regions.items():
        kind = key.split("_")[0]
        bank = banks[kind]
        centres = _place(rng, region, truth_l0_per_px, _DENSITY[key] * px_area, shape)
        _stamp_padded(nuclei, centres, bank, rng, pad)
    nuclei = nuclei[pad : pad + h, pad : pad + w]

    lut = _stain_lut(rng)
    out = np.empty((h, w, 3), dtype=np.uint8)

    def band(l0_y0: int, l0_y1: int, grain: np.ndarray) -> None:
        e = _upsample(eosin, field_l0_per_px, l0_y0, l0_y1, w)
        hm = _upsample(haema, field_l0_per_px, l0_y0, l0_y1, w)
        e_q = np.clip(e * _STAIN_STEPS + 6.0 * grain * (e > 0.01), 0, 255).astype(np.uint16)
        h_q = np.clip(hm * _STAIN_STEPS + nuclei[l0_y0:l0_y1], 0, 255).astype(np.uint16)
        out[l0_y0:l0_y1] = lut[(e_q << 8) | h_q]

    # Bands are rendered by threads (NumPy and Pillow release the GIL on whole bands); their
    # grain is drawn here, in band order, so the image does not depend on the thread count.
    threads = _render_threads(w)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="synthetic-band") as pool:
        pending: deque[Future[None]] = deque()
        for l0_y0 in range(0, h, BAND_ROWS):
            l0_y1 = min(h, l0_y0 + BAND_ROWS)
            grain = rng.random((l0_y1 - l0_y0, w), dtype=np.float32) - 0.5
            pending.append(pool.submit(band, l0_y0, l0_y1, grain))
            while len(pending) > threads:  # bounds the grains and temporaries alive at once
                pending.popleft().result()
        for future in pending:
            future.result()
    return out


def _render_threads(width: int) -> int:
    """Threads rendering bands at once: the cores, within RENDER_TEMP_BYTES of temporaries."""
    per_band = RENDER_BYTES_PER_PX * BAND_ROWS * width
    return max(1, min(os.cpu_count() or 1, RENDER_TEMP_BYTES // per_band))


def _smooth_edges(mask: np.ndarray, shape: tuple[int, int], *, sharpen: bool) -> np.ndarray:
    """A boolean raster upsampled to ``shape`` with its pixel staircase rounded off.

    With ``sharpen`` the blurred mask is re-thresholded, giving a crisp but smooth outline
    (tissue edges); without, a soft transition (tumor basophilia fading into stroma).
    """
    up = (shape[0] / mask.shape[0], shape[1] / mask.shape[1])
    soft = _fit(ndimage.zoom(mask.astype(np.float32), up, order=1), shape)
    soft = ndimage.gaussian_filter(soft, 0.8 * max(up))
    if sharpen:
        soft = ndimage.gaussian_filter((soft > 0.5).astype(np.float32), 0.7)
    return np.clip(soft, 0.0, 1.0)


def _fit(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or edge-pad ``array`` to exactly ``shape`` (zoom may be off by a pixel)."""
    array = array[: shape[0], : shape[1]]
    pad_y, pad_x = shape[0] - array.shape[0], shape[1] - array.shape[1]
    if pad_y or pad_x:
        array = np.pad(array, ((0, pad_y), (0, pad_x)), mode="edge")
    return np.ascontiguousarray(array, dtype=np.float32)


def _nucleus_regions(
    rng: np.random.Generator, tissue_t: np.ndarray, tumor_t: np.ndarray
) -> dict[str, np.ndarray]:
    """Where each population of nuclei lives, at truth resolution."""
    normal = tissue_t & ~tumor_t
    h, w = tissue_t.shape
    # Lymphoid aggregates: a few dark clusters in normal tissue that are NOT tumor, so that
    # "dark and dense" alone does not mean tumor.
    blobs = _smooth_noise(rng, (h, w), 0.02 * min(h, w))
    inside = blobs[normal] if normal.any() else np.zeros(1, dtype=np.float32)
    aggregate = normal & (blobs > float(np.quantile(inside, 0.96)))
    return {
        "fibroblast_normal": normal & ~aggregate,
        "fibroblast_tumor": tumor_t,
        "lymphocyte_normal": normal & ~aggregate,
        "lymphocyte_tumor": tumor_t,
        "lymphocyte_aggregate": aggregate,
        "tumor": tumor_t,
    }


def _stamp_padded(
    canvas: np.ndarray, centres: np.ndarray, bank: np.ndarray, rng: np.random.Generator, pad: int
) -> None:
    """Max-composite random stamps of ``bank`` centred on ``centres`` (y, x) into ``canvas``,
    which has ``pad`` pixels of margin on every side."""
    if len(centres) == 0:
        return
    size = bank.shape[1]
    choice = rng.integers(0, len(bank), size=len(centres))
    offsets = (np.arange(size)[:, None] * canvas.shape[1] + np.arange(size)[None, :]).reshape(-1)
    flat = canvas.reshape(-1)
    # Chunks bound the index arrays to ~16 M entries (128 MiB) on 40x slides.
    chunk = max(1, (1 << 24) // (size * size))
    for start in range(0, len(centres), chunk):
        part = centres[start : start + chunk]
        top = part[:, 0] + pad - size // 2
        left = part[:, 1] + pad - size // 2
        base = top * canvas.shape[1] + left
        index = (base[:, None] + offsets[None, :]).reshape(-1)
        values = bank[choice[start : start + chunk]].reshape(-1)
        np.maximum.at(flat, index, values)


# -- polygons --------------------------------------------------------------------------------


def _polygons(truth: np.ndarray, l0_per_px: float) -> list[Polygon]:
    """Tumor polygons (with holes) in level-0 coordinates traced from the truth raster."""
    polygons: list[Polygon] = []
    # 4-connected islands and 8-connected background: the convention of find_contours' default
    # (fully_connected="low"), so each island gives exactly one outer contour.
    labels, _ = ndimage.label(truth)
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        y0, x0 = window[0].start, window[1].start
        island = labels[window] == index
        filled = ndimage.binary_fill_holes(island, structure=np.ones((3, 3), dtype=bool))
        outer = _ring(filled, y0, x0, l0_per_px)
        if outer is None:
            continue
        holes = []
        hole_labels, hole_count = ndimage.label(filled & ~island, structure=np.ones((3, 3)))
        for hole_index in range(1, hole_count + 1):
            ring = _ring(hole_labels == hole_index, y0, x0, l0_per_px)
            if ring is not None:
                holes.append(ring)
        polygon = Polygon(outer, holes).simplify(SIMPLIFY_TRUTH_PX * l0_per_px)
        polygons.extend(_valid_parts(polygon))
    return polygons


def _ring(mask: np.ndarray, y0: int, x0: int, l0_per_px: float) -> np.ndarray | None:
    """The longest 0.5-iso contour of a mask as (x, y) level-0 coordinates."""
    contours = measure.find_contours(np.pad(mask.astype(np.float32), 1), 0.5)
    if not contours:
        return None
    contour = max(contours, key=len)
    if len(contour) < 4:
        return None
    # Contour (row, col) in the padded window; a raster pixel (i, j) spans [j, j+1) x [i, i+1).
    xs = (contour[:, 1] - 1 + x0 + 0.5) * l0_per_px
    ys = (contour[:, 0] - 1 + y0 + 0.5) * l0_per_px
    return np.stack([xs, ys], axis=1)


def _valid_parts(geometry: Any) -> list[Polygon]:
    if geometry.is_empty:
        return []
    if not geometry.is_valid:
        geometry = make_valid(geometry)
    if isinstance(geometry, Polygon):
        return [geometry] if geometry.area > 0 else []
    if isinstance(geometry, MultiPolygon):
        return [part for part in geometry.geoms if part.area > 0]
    parts = getattr(geometry, "geoms", [])
    return [part for g in parts for part in _valid_parts(g)]


# -- writing ---------------------------------------------------------------------------------


def _aperio_description(
    width: int,
    height: int,
    level_size: tuple[int, int] | None,
    tile: int,
    mpp: float,
    objective_power: int,
) -> str:
    head = f"Aperio Image Library v12.0.0 \n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    if level_size is not None:
        head += f" -> {level_size[0]}x{level_size[1]}"
    return f"{head} JPEG/RGB Q={JPEG_QUALITY}|AppMag = {objective_power}|MPP = {mpp:g}"


def write_aperio_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    mpp: float,
    objective_power: int,
    tile: int = 256,
) -> None:
    """Write an RGB raster as a pyramidal tiled JPEG TIFF that OpenSlide reads as Aperio."""
    if tile <= 0 or tile % 16:
        raise InvalidInputError(f"TIFF tiles must be a positive multiple of 16, got {tile}")
    height, width = image.shape[:2]
    levels = [image]
    current = Image.fromarray(image)
    while max(current.size) // 4 >= MIN_LEVEL_SIDE:
        current = current.reduce(4)
        levels.append(np.asarray(current))
    with tifffile.TiffWriter(os.fspath(path), bigtiff=image.nbytes > (1 << 31)) as tif:
        for index, level in enumerate(levels):
            size = None if index == 0 else (level.shape[1], level.shape[0])
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": JPEG_QUALITY},
                description=_aperio_description(width, height, size, tile, mpp, objective_power),
                subfiletype=0 if index == 0 else 1,
                metadata=None,
            )


def generate_slide(
    path: str | os.PathLike[str],
    *,
    seed: int,
    tumor: bool,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    mpp: float = 0.5,
    objective_power: int = 20,
    tile: int = 256,
    case_id: str = "DEMO-0000",
    location: str = LOCATIONS[0],
) -> SyntheticSlide:
    """Generate and write one slide; deterministic for ``seed`` (and the other arguments)."""
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise InvalidInputError(
            f"slide size must be within {MIN_SIDE}..{MAX_SIDE} px per side, got {width}x{height}"
        )
    if not (0.05 <= mpp <= 5.0) or objective_power <= 0:
        raise InvalidInputError(f"implausible resolution: {mpp} um/px at {objective_power}x")
    rng = np.random.default_rng(seed)
    truth_l0_per_px = float(max(2, round(TRUTH_UM_PER_PX / mpp)))
    # Even so that the stain fields (half the truth's pixel) sit on whole level-0 pixels.
    truth_l0_per_px += truth_l0_per_px % 2
    t_shape = (math.ceil(height / truth_l0_per_px), math.ceil(width / truth_l0_per_px))
    tissue = _tissue_shape(rng, t_shape)
    if tumor:
        target = float(rng.uniform(*TUMOR_FRACTION_RANGE))
        min_island = max(1, round(MIN_TUMOR_ISLAND_UM2 / (truth_l0_per_px * mpp) ** 2))
        truth = _tumor_shape(rng, tissue, target, min_island)
    else:
        truth = np.zeros(t_shape, dtype=bool)
    image = _render(rng, (height, width), mpp, tissue, truth, truth_l0_per_px)
    out_path = Path(os.fspath(path))
    write_aperio_tiff(out_path, image, mpp=mpp, objective_power=objective_power, tile=tile)
    tissue_px = int(tissue.sum())
    return SyntheticSlide(
        path=out_path,
        label="tumor" if tumor else "normal",
        case_id=case_id,
        location=location,
        tumor_fraction=float(truth.sum()) / tissue_px if tissue_px else 0.0,
        polygons=_polygons(truth, truth_l0_per_px) if tumor else [],
        truth_l0_per_px=truth_l0_per_px,
        truth=truth,
        tissue=tissue,
        l0_width=width,
        l0_height=height,
        mpp=mpp,
    )


def truth_mask(slide: SyntheticSlide, l0_per_px: float) -> np.ndarray:
    """The tumor truth at another scale: ``(ceil(H / l0_per_px), ceil(W / l0_per_px))`` bool,
    each pixel taking the truth at its centre (nearest neighbour, no blending)."""
    return _resample(slide.truth, slide, l0_per_px)


def tissue_truth_mask(slide: SyntheticSlide, l0_per_px: float) -> np.ndarray:
    """The generator's tissue region at another scale (same convention as :func:`truth_mask`)."""
    return _resample(slide.tissue, slide, l0_per_px)


def _resample(raster: np.ndarray, slide: SyntheticSlide, l0_per_px: float) -> np.ndarray:
    if not (math.isfinite(l0_per_px) and l0_per_px > 0):
        raise InvalidInputError(f"l0_per_px must be positive, got {l0_per_px}")
    width = slide.l0_width or raster.shape[1] * slide.truth_l0_per_px
    height = slide.l0_height or raster.shape[0] * slide.truth_l0_per_px
    out_h, out_w = math.ceil(height / l0_per_px), math.ceil(width / l0_per_px)
    centre_y = (np.arange(out_h) + 0.5) * l0_per_px
    centre_x = (np.arange(out_w) + 0.5) * l0_per_px
    ty = np.minimum((centre_y / slide.truth_l0_per_px).astype(np.int64), raster.shape[0] - 1)
    tx = np.minimum((centre_x / slide.truth_l0_per_px).astype(np.int64), raster.shape[1] - 1)
    result: np.ndarray = raster[ty[:, None], tx[None, :]]
    return result


def polygons_geojson(polygons: list[Polygon], *, label: str = "tumor") -> dict[str, Any]:
    """A GeoJSON FeatureCollection of polygons in level-0 pixel coordinates."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": mapping(polygon),
                "properties": {"label": label, "classification": {"name": label.capitalize()}},
            }
            for polygon in polygons
        ],
    }


def polygons_asap_xml(polygons: list[Polygon]) -> str:
    """ASAP XML of tumor polygons: exteriors in group ``Tumor``, holes in exclusion group ``_2``."""
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    rings: list[tuple[str, Any]] = []
    for polygon in polygons:
        rings.append(("Tumor", polygon.exterior))
        rings.extend(("_2", interior) for interior in polygon.interiors)
    for index, (group, ring) in enumerate(rings):
        annotation = ET.SubElement(
            annotations,
            "Annotation",
            Name=f"Annotation {index}",
            Type="Polygon",
            PartOfGroup=group,
            Color="#F4FA58" if group == "Tumor" else "#64FE2E",
        )
        coordinates = ET.SubElement(annotation, "Coordinates")
        # The ring repeats its first vertex at the end; ASAP polygons are implicitly closed.
        for order, (x, y) in enumerate(list(ring.coords)[:-1]):
            ET.SubElement(coordinates, "Coordinate", Order=str(order), X=f"{x:.2f}", Y=f"{y:.2f}")
    groups = ET.SubElement(root, "AnnotationGroups")
    for name, color in (("Tumor", "#F4FA58"), ("_2", "#64FE2E")):
        group_element = ET.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color=color)
        ET.SubElement(group_element, "Attributes")
    return ET.tostring(root, encoding="unicode")


def write_demo_cohort(
    outdir: str | os.PathLike[str],
    *,
    n_slides: int,
    seed: int = 0,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    write_asap_xml: bool = False,
) -> list[SyntheticSlide]:
    """Write a demo cohort: ``demo_000.svs`` ..., ``labels.csv``, ``<slide>.geojson`` per slide.

    Slides alternate tumor / normal (even indices tumor); slides ``2k`` and ``2k + 1`` belong to
    case ``DEMO-k`` (a tumor and a normal slide of one patient, as in TCGA), whose location
    cycles through :data:`LOCATIONS`. Normal slides get an empty FeatureCollection.
    """
    if n_slides <= 0:
        raise InvalidInputError(f"n_slides must be positive, got {n_slides}")
    directory = Path(os.fspath(outdir))
    directory.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(n_slides - 1)))
    slides: list[SyntheticSlide] = []
    for index in range(n_slides):
        case = index // 2
        # One independent stream per slide: adding slides never changes the earlier ones.
        slide_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        slide = generate_slide(
            directory / f"demo_{index:0{digits}d}.svs",
            seed=slide_seed,
            tumor=index % 2 == 0,
            width=width,
            height=height,
            case_id=f"DEMO-{case:04d}",
            location=LOCATIONS[case % len(LOCATIONS)],
        )
        geojson_path = slide.path.with_name(slide.path.name + ".geojson")
        geojson_path.write_text(json.dumps(polygons_geojson(slide.polygons)), encoding="utf-8")
        if write_asap_xml:
            xml_path = slide.path.with_suffix(".xml")
            xml_path.write_text(polygons_asap_xml(slide.polygons), encoding="utf-8")
        slides.append(slide)
    with (directory / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "case_id", "location"])
        for slide in slides:
            writer.writerow([slide.path.name, slide.label, slide.case_id, slide.location])
    return slides
