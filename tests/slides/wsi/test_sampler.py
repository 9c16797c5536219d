from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from common.errors import EmptyTissueError, InvalidInputError
from slides.wsi.reader import SlideReader
from slides.wsi.sampler import MIN_TISSUE, PatchSampler, read_patches, sample_patches
from slides.wsi.synthetic import SyntheticSlide, generate_slide, write_aperio_tiff
from slides.wsi.tissue import TissueMask

B = 150  # the paper's patches per slide and step


@pytest.mark.parametrize("slide", ["cmu_slide", "tcga_slide"])
def test_150_patches_from_real_slides_lie_in_tissue(
    slide: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(slide)
    sampler = PatchSampler(path, patch_size=224, target_mpp=0.5)
    batch = sampler.sample(B, np.random.default_rng(0))
    assert batch.l0_xy.shape == (B, 2) and batch.l0_xy.dtype == np.int64
    assert batch.patches.shape == (B, 224, 224, 3) and batch.patches.dtype == np.uint8
    fractions = sampler.tissue.box_fractions(batch.l0_xy, sampler.l0_patch_size)
    assert (fractions >= MIN_TISSUE).all()
    # Without replacement: these slides have more than 150 candidates.
    assert len(sampler.candidates()) > B
    assert len(np.unique(batch.l0_xy, axis=0)) == B
    # Inside the slide, and not blank glass.
    meta = sampler.metadata
    assert (batch.l0_xy >= 0).all()
    assert (batch.l0_xy[:, 0] + sampler.l0_patch_size <= meta.l0_width + 1).all()
    assert (batch.l0_xy[:, 1] + sampler.l0_patch_size <= meta.l0_height + 1).all()
    assert float(batch.patches.mean()) < 235


def test_sampling_is_reproducible(cmu_slide: Path) -> None:
    first = sample_patches(cmu_slide, 20, seed=7)
    again = sample_patches(cmu_slide, 20, seed=7)
    other = sample_patches(cmu_slide, 20, seed=8)
    np.testing.assert_array_equal(first.l0_xy, again.l0_xy)
    np.testing.assert_array_equal(first.patches, again.patches)
    assert not np.array_equal(first.l0_xy, other.l0_xy)


def test_patches_are_the_reader_patches(cmu_slide: Path) -> None:
    sampler = PatchSampler(cmu_slide, patch_size=64, target_mpp=1.0)
    batch = sampler.sample(5, np.random.default_rng(1))
    with SlideReader(cmu_slide) as reader:
        for (x, y), patch in zip(batch.l0_xy.tolist(), batch.patches, strict=True):
            np.testing.assert_array_equal(patch, reader.read_patch((x, y), 64, 1.0))


def test_read_patches_fills_a_given_array(cmu_slide: Path) -> None:
    sampler = PatchSampler(cmu_slide, patch_size=64, target_mpp=1.0)
    l0_xy = sampler.sample_positions(4, np.random.default_rng(2))
    out = np.zeros((6, 64, 64, 3), dtype=np.uint8)
    returned = read_patches(cmu_slide, l0_xy, patch_size=64, target_mpp=1.0, out=out[1:5])
    assert np.shares_memory(returned, out)
    np.testing.assert_array_equal(out[1:5], sampler.read(l0_xy))
    assert not out[0].any() and not out[5].any()  # nothing written outside the view
    with pytest.raises(ValueError, match=r"\(4, 64, 64, 3\) uint8"):
        read_patches(cmu_slide, l0_xy, patch_size=64, target_mpp=1.0, out=out[:3])
    with pytest.raises(ValueError, match="uint8"):
        read_patches(cmu_slide, l0_xy, patch_size=64, target_mpp=1.0, out=np.zeros((4, 64, 64, 3)))


def test_candidates_are_uniform_over_the_tissue(synthetic_tumor: SyntheticSlide) -> None:
    sampler = PatchSampler(synthetic_tumor.path, patch_size=64, target_mpp=0.5)
    candidates = sampler.candidates()
    # Half-patch lattice: neighbouring candidates are 32 px apart.
    for axis, extent in ((0, 2048), (1, 1536)):
        values = candidates[:, axis]
        # On the lattice, or flush with the far border.
        assert ((values % 32 == 0) | (values == extent - 64)).all()
    positions = sampler.sample_positions(1000, np.random.default_rng(0))
    # All distinct while there are enough candidates.
    assert len(candidates) > 1000
    assert len(np.unique(positions, axis=0)) == 1000


def test_too_few_candidates_sample_with_replacement(
    cmu_slide: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 1024 px patches at 0.5 um/px: only a handful of distinct tissue positions.
    sampler = PatchSampler(cmu_slide, patch_size=128, target_mpp=4.0, min_tissue=0.3)
    candidates = sampler.candidates()
    assert 0 < len(candidates) < 20
    positions = sampler.sample_positions(20, np.random.default_rng(0))
    assert positions.shape == (20, 2)
    unique = np.unique(positions, axis=0)
    # Every distinct candidate is used at least once before any repeats.
    assert len(unique) == len(candidates)
    assert "with replacement" in caplog.text


def test_tissue_at_the_border_is_shifted_inside(tmp_path: Path) -> None:
    path = tmp_path / "edge.svs"
    image = np.full((700, 900, 3), 245, dtype=np.uint8)
    image[:, 860:] = (200, 110, 170)  # a 40 px strip of "tissue" along the right border
    image[660:, :] = (200, 110, 170)  # and along the bottom
    write_aperio_tiff(path, image, mpp=0.5, objective_power=20)
    mask = np.zeros((44, 57), dtype=bool)  # 16 l0 px per mask pixel
    mask[:, 54:] = True
    mask[41:, :] = True
    tissue = TissueMask(mask=mask, l0_per_px=16.0, fraction=float(mask.mean()))
    sampler = PatchSampler(path, patch_size=64, tissue=tissue, min_tissue=0.3)
    candidates = sampler.candidates()
    assert candidates[:, 0].max() == 900 - 64  # flush with the right border, not dropped
    assert candidates[:, 1].max() == 700 - 64
    batch = sampler.sample(len(candidates), np.random.default_rng(0))
    assert (batch.l0_xy[:, 0] + 64 <= 900).all() and (batch.l0_xy[:, 1] + 64 <= 700).all()
    assert not (batch.patches == 255).all(axis=(1, 2, 3)).any()


def test_slide_without_tissue_raises(tmp_path: Path) -> None:
    path = tmp_path / "blank.svs"
    write_aperio_tiff(
        path, np.full((600, 800, 3), 250, dtype=np.uint8), mpp=0.5, objective_power=20
    )
    sampler = PatchSampler(path)
    assert sampler.tissue.fraction == 0.0
    with pytest.raises(EmptyTissueError, match=r"blank\.svs") as info:
        sampler.sample(B, np.random.default_rng(0))
    assert info.value.code == "empty_tissue"
    with pytest.raises(EmptyTissueError):
        sampler.grid()
    with pytest.raises(EmptyTissueError):
        sample_patches(path, 4)


def test_invalid_arguments(cmu_slide: Path) -> None:
    with pytest.raises(InvalidInputError):
        PatchSampler(cmu_slide, patch_size=0)
    with pytest.raises(InvalidInputError):
        PatchSampler(cmu_slide, min_tissue=1.5)
    sampler = PatchSampler(cmu_slide)
    with pytest.raises(InvalidInputError):
        sampler.sample_positions(0, np.random.default_rng(0))
    with pytest.raises(InvalidInputError):
        sampler.grid(stride=0)


def test_grid_covers_the_tissue_without_overlap(synthetic_tumor: SyntheticSlide) -> None:
    sampler = PatchSampler(synthetic_tumor.path, patch_size=128, target_mpp=0.5)
    grid = sampler.grid()
    rows, cols = grid.shape
    assert grid.l0_patch_size == pytest.approx(128.0) and grid.l0_stride == pytest.approx(128.0)
    assert (rows, cols) == (12, 16)  # 1536 / 128, 2048 / 128
    np.testing.assert_array_equal(grid.l0_xy, grid.index[:, ::-1] * 128)
    assert len(np.unique(grid.index, axis=0)) == len(grid.index)
    # Every tissue mask pixel lies in one of the grid's patches.
    tissue = sampler.tissue
    covered = np.zeros((rows, cols), dtype=bool)
    covered[grid.index[:, 0], grid.index[:, 1]] = True
    m_y, m_x = np.nonzero(tissue.mask)
    cell_r = np.minimum(((m_y + 0.5) * tissue.l0_per_px / 128).astype(int), rows - 1)
    cell_c = np.minimum(((m_x + 0.5) * tissue.l0_per_px / 128).astype(int), cols - 1)
    assert covered[cell_r, cell_c].mean() > 0.99
    overlapping = sampler.grid(stride=64)
    assert overlapping.shape == (23, 31)
    patches = sampler.read(grid.l0_xy[:4])
    assert patches.shape == (4, 128, 128, 3)


def test_sampler_pickles_without_a_handle(cmu_slide: Path) -> None:
    sampler = PatchSampler(cmu_slide, patch_size=32)
    sampler.candidates()  # builds the tissue mask's integral image, which is not pickled
    clone = pickle.loads(pickle.dumps(sampler))
    assert "_sat" not in clone.tissue.__dict__
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(sampler.sample(4, rng_a).patches, clone.sample(4, rng_b).patches)


def test_40x_slide_reads_twice_the_pixels_and_halves_them(tmp_path: Path) -> None:
    slide = generate_slide(
        tmp_path / "x40.svs",
        seed=5,
        tumor=True,
        width=1536,
        height=1024,
        mpp=0.25,
        objective_power=40,
    )
    sampler = PatchSampler(slide.path, patch_size=224, target_mpp=0.5)
    assert sampler.metadata.mpp == 0.25 and sampler.metadata.objective_power == 40
    assert sampler.l0_patch_size == 448 and sampler.level == 0
    batch = sampler.sample(8, np.random.default_rng(0))
    assert batch.patches.shape == (8, 224, 224, 3)
    with SlideReader(slide.path) as reader:
        x, y = batch.l0_xy[0].tolist()
        full = reader.read_region_l0((x, y), 0, (448, 448)).astype(np.float64)
    halved = full.reshape(224, 2, 224, 2, 3).mean(axis=(1, 3))
    assert np.abs(halved - batch.patches[0]).max() <= 1.0
