"""Slides as bags: one dataset item is one slide's B sampled patches and the slide's label.

Sampling is seeded per (seed, stream, epoch, slide index), never by the worker that happens to
load an item, so a run samples the same patches whatever ``num_workers`` is and after a resume.
Each process (the main one and every DataLoader worker) opens its own samplers lazily, keyed by
``os.getpid()``: OpenSlide handles must not cross a fork.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import InvalidInputError
from training.mil.config import RunConfig

logger = logging.getLogger(__name__)

# Each sampler holds an open slide and its tissue mask; beyond this many per process the least
# recently used are dropped, so a cohort of thousands of slides cannot exhaust file handles.
MAX_OPEN_SAMPLERS = 32

# Independent random streams of one run, so that training, validation and the normalisation
# sample never draw the same patches by construction.
STREAM_TRAIN = 0
STREAM_VAL = 1
STREAM_NORMALISATION = 2


@dataclass(frozen=True)
class SlideEntry:
    """One slide of a cohort: its file, its slide-level label (1 tumor, 0 normal).

    ``default_mpp`` is used when the file carries no resolution metadata. ``tissue_mask_path``
    (with ``tissue_l0_per_px``) names the slide's stored tissue mask image; the sampler then
    loads it instead of computing the mask from the slide for every bag (the slide's import
    already computed it, and on a slide without a pyramid that takes longer than the patches).
    """

    path: str
    label: int
    default_mpp: float | None = None
    slide_id: str | None = None
    tissue_mask_path: str | None = None
    tissue_l0_per_px: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))
        if self.tissue_mask_path is not None:
            object.__setattr__(self, "tissue_mask_path", os.fspath(self.tissue_mask_path))
        if (self.tissue_mask_path is None) != (self.tissue_l0_per_px is None):
            raise InvalidInputError(
                f"a stored tissue mask needs both its path and its l0_per_px ({self.path})",
                details={"path": self.path},
            )
        if self.tissue_l0_per_px is not None and not self.tissue_l0_per_px > 0:
            raise InvalidInputError(
                f"tissue_l0_per_px must be > 0, got {self.tissue_l0_per_px} for {self.path}",
                details={"path": self.path},
            )
        if isinstance(self.label, bool) or self.label not in (0, 1):
            raise InvalidInputError(
                f"slide label must be 0 (normal) or 1 (tumor), got {self.label!r} for {self.path}",
                details={"path": self.path},
            )
        if self.default_mpp is not None and not self.default_mpp > 0:
            raise InvalidInputError(
                f"default_mpp must be > 0, got {self.default_mpp} for {self.path}",
                details={"path": self.path},
            )

    @property
    def name(self) -> str:
        """The slide id when given, else the file name."""
        return self.slide_id if self.slide_id is not None else Path(self.path).name


class PatchBatchLike(Protocol):
    """What a sampler's ``sample`` returns (``slides.wsi.sampler.PatchBatch``)."""

    @property
    def l0_xy(self) -> np.ndarray: ...

    @property
    def patches(self) -> np.ndarray: ...


class BagSampler(Protocol):
    """The part of ``slides.wsi.sampler.PatchSampler`` this module uses."""

    def sample(self, n: int, rng: np.random.Generator) -> Any: ...


SamplerFactory = Callable[[SlideEntry], BagSampler]
# (entry, l0_xy (B, 2), l0_patch_size in level-0 px) -> per-patch truth maps (B, t, t) in
# [0, 1], any t.
TruthFn = Callable[[SlideEntry, np.ndarray, float], np.ndarray]


def _open_patch_sampler(
    entry: SlideEntry, *, patch_size: int, target_mpp: float, min_tissue: float
) -> BagSampler:
    # Imported here so the engine imports without OpenSlide until a real slide is read.
    from slides.wsi.sampler import PatchSampler
    from slides.wsi.tissue import TissueMask, load_tissue_mask_image

    tissue: TissueMask | None = None
    if entry.tissue_mask_path is not None and entry.tissue_l0_per_px is not None:
        try:
            tissue = load_tissue_mask_image(
                entry.tissue_mask_path, l0_per_px=entry.tissue_l0_per_px
            )
        except InvalidInputError as exc:
            # The stored mask is a cache of the slide: recompute it rather than fail the run.
            logger.warning("%s: %s; computing the tissue mask from the slide", entry.name, exc)
    sampler: BagSampler = PatchSampler(
        entry.path,
        patch_size=patch_size,
        target_mpp=target_mpp,
        default_mpp=entry.default_mpp,
        tissue=tissue,
        min_tissue=min_tissue,
    )
    return sampler


def patch_sampler_factory(
    *, patch_size: int, target_mpp: float, min_tissue: float = 0.5
) -> SamplerFactory:
    """A picklable factory of real ``slides.wsi.sampler.PatchSampler`` objects."""
    return functools.partial(
        _open_patch_sampler, patch_size=patch_size, target_mpp=target_mpp, min_tissue=min_tissue
    )


def _close(sampler: BagSampler) -> None:
    close = getattr(sampler, "close", None)
    if callable(close):
        close()


def item_seed(seed: int, stream: int, epoch: int, slide_index: int) -> np.random.SeedSequence:
    """The seed of one slide's sampling in one epoch."""
    return np.random.SeedSequence([seed, stream, epoch, slide_index])


class SlideBagDataset(Dataset[dict[str, Any]]):
    """Item i = dict(patches uint8 (B, S, S, 3), label, slide_index, l0_xy int64 (B, 2)[, truth]).

    ``patches`` are NHWC uint8 tensors (4x cheaper to move than floats; conversion and
    augmentation happen on the device). With ``truth_fn``, ``truth`` holds float32 per-patch
    truth maps (B, t, t) for pixel-level validation metrics.
    """

    def __init__(
        self,
        entries: Sequence[SlideEntry],
        *,
        patches_per_slide: int,
        seed: int,
        sampler_factory: SamplerFactory,
        stream: int = STREAM_TRAIN,
        truth_fn: TruthFn | None = None,
    ) -> None:
        if patches_per_slide < 1:
            raise InvalidInputError(f"patches_per_slide must be >= 1, got {patches_per_slide}")
        self.entries = list(entries)
        self.patches_per_slide = patches_per_slide
        self.seed = seed
        self.stream = stream
        self.sampler_factory = sampler_factory
        self.truth_fn = truth_fn
        self.epoch = 0
        self._pid = os.getpid()
        self._samplers: OrderedDict[int, BagSampler] = OrderedDict()
        self._l0_patch_sizes: dict[int, float] = {}

    @classmethod
    def from_config(
        cls,
        entries: Sequence[SlideEntry],
        config: RunConfig,
        *,
        stream: int = STREAM_TRAIN,
        sampler_factory: SamplerFactory | None = None,
        truth_fn: TruthFn | None = None,
    ) -> SlideBagDataset:
        """A dataset sampling as ``config`` says, through real PatchSamplers by default."""
        factory = sampler_factory or patch_sampler_factory(
            patch_size=config.patch_size,
            target_mpp=config.target_mpp,
            min_tissue=config.min_tissue,
        )
        return cls(
            entries,
            patches_per_slide=config.patches_per_slide,
            seed=config.seed,
            sampler_factory=factory,
            stream=stream,
            truth_fn=truth_fn,
        )

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose patches ``__getitem__`` samples (call before iterating)."""
        self.epoch = int(epoch)

    def labels(self) -> list[int]:
        """The slide labels, in index order."""
        return [entry.label for entry in self.entries]

    def __getstate__(self) -> dict[str, Any]:
        # Open slides do not pickle (spawned workers): each process reopens its own.
        state = self.__dict__.copy()
        state["_samplers"] = OrderedDict()
        state["_l0_patch_sizes"] = {}
        return state

    def close(self) -> None:
        """Drop this process's open samplers (closing those that can be closed)."""
        samplers, self._samplers = self._samplers, OrderedDict()
        self._l0_patch_sizes = {}
        if self._pid != os.getpid():
            return  # inherited from another process: not ours to close
        for sampler in samplers.values():
            _close(sampler)

    def _sampler(self, index: int) -> BagSampler:
        if self._pid != os.getpid():
            # A forked copy: the parent's handles are not ours to use.
            self._pid = os.getpid()
            self._samplers = OrderedDict()
            self._l0_patch_sizes = {}
        sampler = self._samplers.get(index)
        if sampler is None:
            sampler = self.sampler_factory(self.entries[index])
            self._samplers[index] = sampler
            while len(self._samplers) > MAX_OPEN_SAMPLERS:
                _old_index, old = self._samplers.popitem(last=False)
                _close(old)
        else:
            self._samplers.move_to_end(index)
        return sampler

    def _l0_patch_size(self, index: int, sampler: BagSampler) -> float:
        size = self._l0_patch_sizes.get(index)
        if size is None:
            attr = getattr(sampler, "l0_patch_size", None)
            if attr is None:
                attr = sampler.grid().l0_patch_size  # type: ignore[attr-defined]
            size = float(attr)
            self._l0_patch_sizes[index] = size
        return size

    def sample_patches(
        self, index: int, n: int, *, stream: int, epoch: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` patches of slide ``index`` from an explicit stream: (patches, l0_xy) arrays."""
        rng = np.random.default_rng(item_seed(self.seed, stream, epoch, index))
        batch = self._sampler(index).sample(n, rng)
        return np.ascontiguousarray(batch.patches), np.asarray(batch.l0_xy, dtype=np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"slide index {index} out of range 0..{len(self.entries) - 1}")
        entry = self.entries[index]
        patches, l0_xy = self.sample_patches(
            index, self.patches_per_slide, stream=self.stream, epoch=self.epoch
        )
        item: dict[str, Any] = {
            "patches": torch.from_numpy(patches),
            "label": entry.label,
            "slide_index": index,
            "l0_xy": torch.from_numpy(l0_xy),
        }
        if self.truth_fn is not None:
            l0_patch_size = self._l0_patch_size(index, self._sampler(index))
            truth = np.asarray(self.truth_fn(entry, l0_xy, l0_patch_size), dtype=np.float32)
            if truth.ndim != 3 or truth.shape[0] != patches.shape[0]:
                raise ValueError(
                    f"truth_fn must return (B, t, t) maps for B={patches.shape[0]} patches, "
                    f"got shape {truth.shape}"
                )
            item["truth"] = torch.from_numpy(truth)
        return item
