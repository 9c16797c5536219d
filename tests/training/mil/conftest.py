"""Shared fixtures of the training-engine tests: few threads, a fake patch sampler."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from training.mil.config import RunConfig
from training.mil.dataset import SlideEntry

# The test machine is shared: two threads at most keep the suite from starving others.
TEST_THREADS = 2
# Fake slides are FAKE_EXTENT level-0 px wide; on tumor slides the left TUMOR_FRACTION of the
# width is tumor, so a patch's truth is known from its corner alone.
FAKE_EXTENT = 10_000
TUMOR_FRACTION = 0.5
FAKE_L0_PATCH = 100.0


@pytest.fixture(autouse=True)
def _few_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(previous)


@dataclass(frozen=True)
class FakeBatch:
    l0_xy: np.ndarray
    patches: np.ndarray


def is_tumor(entry: SlideEntry, l0_xy: np.ndarray) -> np.ndarray:
    """(B,) bool: which corners lie in the tumor part of a fake slide."""
    if entry.label == 0:
        return np.zeros(len(l0_xy), dtype=bool)
    return np.asarray(l0_xy)[:, 0] < FAKE_EXTENT * TUMOR_FRACTION


def render_patch(entry: SlideEntry, l0_x: int, l0_y: int, size: int, tumor: bool) -> np.ndarray:
    """A pinkish noise patch, with a bright square blob when it is tumor; a function of its
    slide and corner only, like a real slide."""
    rng = np.random.default_rng([zlib.crc32(entry.path.encode()), l0_x, l0_y])
    base = np.array([200, 150, 190], dtype=np.float64)
    patch = base + rng.normal(0, 12, size=(size, size, 3))
    if tumor:
        half = max(2, size // 4)
        cy, cx = rng.integers(half, size - half + 1, size=2)
        patch[cy - half : cy + half, cx - half : cx + half] = 255
    return np.clip(patch, 0, 255).astype(np.uint8)


class FakeSampler:
    """Stands in for slides.wsi.sampler.PatchSampler: uniform corners, rendered patches."""

    l0_patch_size = FAKE_L0_PATCH

    def __init__(self, entry: SlideEntry, patch_size: int) -> None:
        self.entry = entry
        self.patch_size = patch_size
        self.closed = False

    def sample(self, n: int, rng: np.random.Generator) -> FakeBatch:
        l0_xy = rng.integers(0, FAKE_EXTENT, size=(n, 2), dtype=np.int64)
        tumor = is_tumor(self.entry, l0_xy)
        patches = np.stack(
            [
                render_patch(self.entry, int(x), int(y), self.patch_size, bool(t))
                for (x, y), t in zip(l0_xy.tolist(), tumor, strict=True)
            ]
        )
        return FakeBatch(l0_xy=l0_xy, patches=patches)

    def close(self) -> None:
        self.closed = True


class FakeSamplerFactory:
    """Picklable factory; counts how many samplers it opened (in this process)."""

    def __init__(self, patch_size: int) -> None:
        self.patch_size = patch_size
        self.opened = 0

    def __call__(self, entry: SlideEntry) -> FakeSampler:
        self.opened += 1
        return FakeSampler(entry, self.patch_size)


def fake_truth(entry: SlideEntry, l0_xy: np.ndarray, l0_patch_size: float) -> np.ndarray:
    """Per-patch truth maps (B, 4, 4) of fake slides."""
    tumor = is_tumor(entry, l0_xy).astype(np.float32)
    return np.broadcast_to(tumor[:, None, None], (len(l0_xy), 4, 4)).copy()


@pytest.fixture
def fake_factory() -> Callable[[int], FakeSamplerFactory]:
    return FakeSamplerFactory


@pytest.fixture
def truth_fn() -> Callable[[SlideEntry, np.ndarray, float], np.ndarray]:
    return fake_truth


@pytest.fixture
def fake_entries() -> Callable[[int, int], list[SlideEntry]]:
    """``make(n_tumor, n_normal)``: fake slide entries, tumor first."""

    def make(n_tumor: int, n_normal: int, prefix: str = "slide") -> list[SlideEntry]:
        labels = [1] * n_tumor + [0] * n_normal
        return [
            SlideEntry(path=f"/fake/{prefix}-{i}.svs", label=label, slide_id=f"{prefix}-{i}")
            for i, label in enumerate(labels)
        ]

    return make


@pytest.fixture
def tiny_config() -> Callable[..., RunConfig]:
    """``make(**changes)``: a small, fast, deterministic CPU configuration."""

    def make(**changes: Any) -> RunConfig:
        base = RunConfig(
            alpha=0.4,
            beta=0.2,
            arch="resnet18",
            pretrained="none",
            patch_size=32,
            patches_per_slide=8,
            epochs=2,
            lr=1e-3,
            num_workers=0,
            normalisation_patches=32,
            amp=False,
            channels_last=False,
            deterministic=True,
            seed=3,
        )
        return base.replace(**changes)

    return make
