"""Uniform random tissue patches from a slide (training) and regular grids of them (inference).

Candidate positions are the corners of a lattice over the slide, half a patch apart, whose patch
holds at least ``min_tissue`` tissue. A training step draws B of them uniformly WITHOUT
replacement; only a slide with fewer than B candidates is sampled WITH replacement (each distinct
position is then still drawn as evenly as possible: every one once, the rest at random).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import EmptyTissueError, InvalidInputError
from slides.wsi.reader import SlideMetadata, open_slide
from slides.wsi.tissue import TissueMask, slide_tissue_mask

logger = logging.getLogger(__name__)

# A patch is a tissue patch when at least half of it is tissue: the paper samples "from the
# tissue", and half-glass patches still carry tissue context while pure edges do not.
MIN_TISSUE = 0.5
# Whole-slide inference must cover every bit of tissue: any patch touching 1% tissue is inferred.
GRID_MIN_TISSUE = 0.01
# Lattice stride as a fraction of the patch: half a patch gives 4 distinct candidates per patch
# area (so B = 150 distinct patches fit on ~40 patches' worth of tissue) and keeps the candidate
# array small on gigapixel slides (~2.5 M positions for a 200k x 160k 40x slide).
CANDIDATE_STRIDE_FRACTION = 0.5
# Default patch geometry of the paper: 224 px at 20x.
PATCH_SIZE = 224
TARGET_MPP = 0.5


@dataclass(frozen=True, eq=False)
class PatchBatch:
    """Patches and where they come from."""

    l0_xy: np.ndarray  # (B, 2) int64 top-left corners (x, y), level-0 pixels
    patches: np.ndarray  # (B, S, S, 3) uint8 RGB


@dataclass(frozen=True, eq=False)
class PatchGrid:
    """A regular grid of tissue patches covering a slide, for whole-slide inference."""

    l0_xy: np.ndarray  # (N, 2) int64 top-left corners (x, y), level-0 pixels
    l0_patch_size: float  # patch side in level-0 pixels
    shape: tuple[int, int]  # (rows, cols) of the full grid, tissue or not
    index: np.ndarray  # (N, 2) int64 (row, col) of each patch in the grid
    l0_stride: float  # grid step in level-0 pixels


def _lattice(l0_extent: int, l0_patch: float, l0_stride: float) -> np.ndarray:
    """Corners along one axis: regular steps, plus the last corner flush with the far border so
    tissue at the edge is reachable (shifted inside the slide rather than dropped)."""
    last = l0_extent - l0_patch
    if last <= 0:
        return np.zeros(1, dtype=np.int64)
    steps = np.arange(0.0, last, l0_stride)
    corners = np.unique(np.concatenate([np.round(steps), [math.floor(last)]]).astype(np.int64))
    return corners


def read_patches(
    path: str | os.PathLike[str],
    l0_xy: np.ndarray,
    *,
    patch_size: int,
    target_mpp: float,
    default_mpp: float | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Read ``patch_size`` px patches at ``target_mpp`` whose level-0 top-left corners are
    ``l0_xy`` (B, 2) into one (B, S, S, 3) uint8 array: ``out`` when given (page-locked memory,
    say), a new one otherwise.

    Needs no tissue mask, so a reader process can serve any slide from a few numbers.
    """
    corners = np.asarray(l0_xy, dtype=np.int64).reshape(-1, 2)
    shape = (len(corners), patch_size, patch_size, 3)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be a {shape} uint8 array, got {out.shape} {out.dtype}")
    with open_slide(path, default_mpp=default_mpp) as reader:
        for i, (l0_x, l0_y) in enumerate(corners.tolist()):
            # Written straight into the batch (no intermediate array).
            reader.read_patch_into(out[i], (l0_x, l0_y), target_mpp)
    return out


class PatchSampler:
    """Samples fixed-size RGB patches at ``target_mpp`` um/px from the tissue of one slide.

    Holds no open handle (slides come from :func:`~slides.wsi.reader.open_slide`'s cache), so it
    can be pickled into DataLoader workers; each process opens its own handles.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        patch_size: int = PATCH_SIZE,
        target_mpp: float = TARGET_MPP,
        default_mpp: float | None = None,
        tissue: TissueMask | None = None,
        min_tissue: float = MIN_TISSUE,
    ) -> None:
        if patch_size <= 0:
            raise InvalidInputError(f"patch_size must be positive, got {patch_size}")
        if not (math.isfinite(target_mpp) and target_mpp > 0):
            raise InvalidInputError(f"target_mpp must be positive, got {target_mpp}")
        if not 0.0 <= min_tissue <= 1.0:
            raise InvalidInputError(f"min_tissue must lie in [0, 1], got {min_tissue}")
        self.path = Path(os.fspath(path))
        self.patch_size = int(patch_size)
        self.target_mpp = float(target_mpp)
        self.default_mpp = default_mpp
        self.min_tissue = float(min_tissue)
        with open_slide(self.path, default_mpp=default_mpp) as reader:
            self.metadata: SlideMetadata = reader.metadata
            self.tissue = tissue if tissue is not None else slide_tissue_mask(reader)
            self.level = reader.best_level(self.target_mpp)
        self.l0_patch_size = self.patch_size * self.target_mpp / self.metadata.mpp
        self._candidates: np.ndarray | None = None

    def __repr__(self) -> str:
        return (
            f"<PatchSampler {self.path.name!r} {self.patch_size}px @ {self.target_mpp:g} um/px, "
            f"tissue {self.tissue.fraction:.1%}>"
        )

    def _no_tissue(self, what: str) -> EmptyTissueError:
        return EmptyTissueError(
            f"slide {self.path.name!r} has no {what} (tissue covers {self.tissue.fraction:.1%} "
            f"of its thumbnail; a {self.patch_size} px patch at {self.target_mpp:g} um/px must "
            f"hold >= {self.min_tissue:.0%} tissue)",
            details={"path": str(self.path), "tissue_fraction": self.tissue.fraction},
        )

    def candidates(self) -> np.ndarray:
        """Level-0 top-left corners (N, 2) int64 whose patch holds >= ``min_tissue`` tissue."""
        if self._candidates is None:
            meta = self.metadata
            l0_stride = max(1.0, self.l0_patch_size * CANDIDATE_STRIDE_FRACTION)
            xs = _lattice(meta.l0_width, self.l0_patch_size, l0_stride)
            ys = _lattice(meta.l0_height, self.l0_patch_size, l0_stride)
            # Rows first, then columns, so candidates come in reading order (deterministic).
            grid = np.empty((len(ys), len(xs), 2), dtype=np.int64)
            grid[..., 0] = xs[None, :]
            grid[..., 1] = ys[:, None]
            lattice = grid.reshape(-1, 2)
            fractions = self.tissue.box_fractions(lattice, self.l0_patch_size)
            self._candidates = np.ascontiguousarray(lattice[fractions >= self.min_tissue])
        if len(self._candidates) == 0:
            raise self._no_tissue("tissue patch")
        return self._candidates

    def sample_positions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` candidate corners (n, 2) int64, uniformly at random.

        Without replacement when there are at least ``n`` candidates; otherwise every candidate
        once plus ``n - N`` drawn with replacement, in random order (and a logged warning).
        """
        if n <= 0:
            raise InvalidInputError(f"the number of patches must be positive, got {n}")
        candidates = self.candidates()
        count = len(candidates)
        if count >= n:
            chosen = rng.choice(count, size=n, replace=False)
        else:
            logger.warning(
                "%s: only %d distinct tissue patches for %d requested; sampling with replacement",
                self.path.name,
                count,
                n,
            )
            chosen = np.concatenate([np.arange(count), rng.choice(count, size=n - count)])
            rng.shuffle(chosen)
        return candidates[chosen]

    def read(self, l0_xy: np.ndarray) -> np.ndarray:
        """Read patches at level-0 corners (B, 2) into one (B, S, S, 3) uint8 array."""
        return read_patches(
            self.path,
            l0_xy,
            patch_size=self.patch_size,
            target_mpp=self.target_mpp,
            default_mpp=self.default_mpp,
        )

    def sample(self, n: int, rng: np.random.Generator) -> PatchBatch:
        """``n`` uniformly random tissue patches and their corners (as :meth:`sample_positions`)."""
        l0_xy = self.sample_positions(n, rng)
        return PatchBatch(l0_xy=l0_xy, patches=self.read(l0_xy))

    def grid(self, *, stride: int | None = None, min_tissue: float = GRID_MIN_TISSUE) -> PatchGrid:
        """Every patch of a regular grid that holds >= ``min_tissue`` tissue.

        ``stride`` is in pixels at ``target_mpp`` (like ``patch_size``); the default, one patch,
        makes the patches non-overlapping. The grid starts at the slide's corner and keeps a
        regular step so maps can be stitched; its last row/column may overhang the border (read
        as white).
        """
        step = self.patch_size if stride is None else int(stride)
        if step <= 0:
            raise InvalidInputError(f"stride must be positive, got {stride}")
        meta = self.metadata
        l0_stride = step * self.target_mpp / meta.mpp
        cols = max(1, math.ceil((meta.l0_width - self.l0_patch_size) / l0_stride) + 1)
        rows = max(1, math.ceil((meta.l0_height - self.l0_patch_size) / l0_stride) + 1)
        index = np.stack(
            np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), axis=-1
        ).reshape(-1, 2)
        l0_xy = np.round(index[:, ::-1] * l0_stride).astype(np.int64)
        keep = self.tissue.box_fractions(l0_xy, self.l0_patch_size) >= min_tissue
        if not keep.any():
            raise self._no_tissue("tissue patch on the inference grid")
        return PatchGrid(
            l0_xy=np.ascontiguousarray(l0_xy[keep]),
            l0_patch_size=self.l0_patch_size,
            shape=(rows, cols),
            index=np.ascontiguousarray(index[keep].astype(np.int64)),
            l0_stride=l0_stride,
        )


def sample_patches(
    path: str | os.PathLike[str],
    n: int,
    *,
    patch_size: int = PATCH_SIZE,
    target_mpp: float = TARGET_MPP,
    seed: int = 0,
    default_mpp: float | None = None,
) -> PatchBatch:
    """``n`` uniformly random tissue patches from one slide, reproducible for a ``seed``."""
    sampler = PatchSampler(
        path, patch_size=patch_size, target_mpp=target_mpp, default_mpp=default_mpp
    )
    return sampler.sample(n, np.random.default_rng(seed))
