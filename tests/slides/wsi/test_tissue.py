from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import InvalidInputError
from slides.wsi.reader import SlideReader
from slides.wsi.synthetic import SyntheticSlide, tissue_truth_mask
from slides.wsi.tissue import (
    MAX_MASK_SIDE,
    TissueMask,
    compute_tissue_mask,
    load_tissue_mask_image,
    mask_l0_per_px,
    slide_tissue_mask,
)

PINK = (225, 140, 190)
PURPLE = (110, 60, 150)
GLASS = (244, 243, 245)


def _canvas(size: tuple[int, int] = (200, 200), color: tuple[int, int, int] = GLASS) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.empty((*size, 3), dtype=np.int16)
    image[:] = color
    image += rng.integers(-3, 4, size=image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _tissue_block(image: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> None:
    rng = np.random.default_rng(1)
    block = np.where(rng.random((y1 - y0, x1 - x0, 1)) < 0.2, PURPLE, PINK)
    image[y0:y1, x0:x1] = block.astype(np.uint8)


@pytest.mark.parametrize("color", [(255, 255, 255), GLASS, (0, 0, 0), (30, 30, 35)])
def test_blank_images_have_no_tissue(color: tuple[int, int, int]) -> None:
    tissue = compute_tissue_mask(_canvas(color=color), l0_per_px=16.0)
    assert tissue.mask.dtype == bool and tissue.mask.shape == (200, 200)
    assert not tissue.mask.any() and tissue.fraction == 0.0


def test_tissue_on_glass_is_found() -> None:
    image = _canvas()
    _tissue_block(image, 50, 150, 40, 120)
    tissue = compute_tissue_mask(image, l0_per_px=16.0)
    truth = np.zeros((200, 200), dtype=bool)
    truth[50:150, 40:120] = True
    assert (tissue.mask & truth).sum() / (tissue.mask | truth).sum() > 0.95
    assert tissue.fraction == pytest.approx(truth.mean(), abs=0.01)


def test_all_tissue_image_is_all_tissue() -> None:
    # No glass mode for Otsu to find: the clipped threshold must not split the tissue.
    image = _canvas(color=PINK)
    _tissue_block(image, 0, 200, 0, 200)
    assert compute_tissue_mask(image, l0_per_px=16.0).fraction > 0.99


@pytest.mark.parametrize(
    "ink", [(40, 70, 190), (30, 140, 60), (60, 160, 160), (20, 20, 25)], ids=str
)
def test_pen_marks_are_not_tissue(ink: tuple[int, int, int]) -> None:
    image = _canvas()
    _tissue_block(image, 60, 140, 20, 90)
    image[20:180, 120:150] = ink  # a thick marker stroke on the glass
    tissue = compute_tissue_mask(image, l0_per_px=16.0)
    assert not tissue.mask[20:180, 125:145].any()
    assert tissue.mask[70:130, 30:80].all()


def test_specks_are_removed_and_small_holes_filled() -> None:
    image = _canvas()
    _tissue_block(image, 40, 160, 40, 160)
    image[95:99, 95:99] = GLASS  # a 64 um hole at 16 um/px: filled
    _tissue_block(image, 10, 12, 10, 12)  # a 32 um speck: debris
    tissue = compute_tissue_mask(image, l0_per_px=32.0)
    assert tissue.mask[95:99, 95:99].all()
    assert not tissue.mask[5:20, 5:20].any()


def test_invalid_input() -> None:
    with pytest.raises(InvalidInputError):
        compute_tissue_mask(np.zeros((0, 5, 3), dtype=np.uint8), l0_per_px=16.0)
    with pytest.raises(InvalidInputError):
        compute_tissue_mask(np.zeros((5, 5), dtype=np.uint8), l0_per_px=16.0)
    with pytest.raises(InvalidInputError):
        compute_tissue_mask(_canvas(), l0_per_px=0.0)


def test_box_fractions_are_exact_area_fractions() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((40, 50)) < 0.4
    tissue = TissueMask(mask=mask, l0_per_px=4.0, fraction=float(mask.mean()))
    # Fine reference: each mask pixel split into 4 x 4 level-0 pixels.
    fine = np.kron(mask, np.ones((4, 4), dtype=bool))
    corners = rng.integers(-10, 200, size=(200, 2))
    sizes = [1.0, 3.0, 7.0, 16.0, 33.0]
    for size in sizes:
        got = tissue.box_fractions(corners, size)
        for (x, y), value in zip(corners, got, strict=True):
            s = int(size)
            window = np.zeros((s, s), dtype=bool)
            ys0, xs0 = max(y, 0), max(x, 0)
            ys1, xs1 = min(y + s, fine.shape[0]), min(x + s, fine.shape[1])
            if ys1 > ys0 and xs1 > xs0:
                window[ys0 - y : ys1 - y, xs0 - x : xs1 - x] = fine[ys0:ys1, xs0:xs1]
            assert value == pytest.approx(window.mean(), abs=1e-9)
    assert tissue.l0_box_fraction((0.0, 0.0), 8.0) == pytest.approx(fine[:8, :8].mean())
    inside = tissue.contains_l0(np.array([[1, 1], [-5, 3], [10_000, 1]]))
    assert inside.tolist() == [bool(mask[0, 0]), False, False]


def test_mask_scale() -> None:
    assert mask_l0_per_px(4000, 3000, 0.5) == 16.0
    assert mask_l0_per_px(4000, 3000, 0.25) == 32.0
    assert mask_l0_per_px(100_000, 80_000, 0.5) == 100_000 / MAX_MASK_SIDE
    assert mask_l0_per_px(100, 80, 20.0) == 1.0


def test_real_slides(cmu_slide: Path, tcga_slide: Path) -> None:
    with SlideReader(cmu_slide) as reader:
        cmu = slide_tissue_mask(reader)
    with SlideReader(tcga_slide) as reader:
        tcga = slide_tissue_mask(reader)
    # Measured: a thin strip of skin on glass, and a large frozen section.
    assert 0.25 < cmu.fraction < 0.5
    assert 0.5 < tcga.fraction < 0.75
    assert cmu.l0_per_px == pytest.approx(16.0, rel=0.01)
    assert cmu.mask.shape == (math.ceil(2967 / cmu.l0_per_px), math.ceil(2220 / cmu.l0_per_px))
    # The glass corners are not tissue.
    for tissue in (cmu, tcga):
        assert not tissue.mask[:5, :5].any() and not tissue.mask[-5:, -5:].any()


def test_mask_matches_the_synthetic_tissue(synthetic_tumor: SyntheticSlide) -> None:
    with SlideReader(synthetic_tumor.path) as reader:
        tissue = slide_tissue_mask(reader)
    truth = tissue_truth_mask(synthetic_tumor, tissue.l0_per_px)[
        : tissue.shape[0], : tissue.shape[1]
    ]
    iou = (tissue.mask & truth).sum() / (tissue.mask | truth).sum()
    assert iou > 0.9


def _saved_mask(path: Path) -> np.ndarray:
    """A random boolean mask saved as an 8-bit PNG (0 glass, 255 tissue); returns the mask."""
    mask = np.random.default_rng(4).random((30, 45)) < 0.3
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return mask


def test_stored_mask_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    mask = _saved_mask(path)
    tissue = load_tissue_mask_image(path, l0_per_px=16.0)
    assert tissue.mask.dtype == bool and tissue.shape == (30, 45)
    np.testing.assert_array_equal(tissue.mask, mask)
    assert tissue.l0_per_px == 16.0
    assert tissue.fraction == pytest.approx(mask.mean())
    # A string path works too, and a given fraction is kept as given (not recomputed).
    given = load_tissue_mask_image(str(path), l0_per_px=7.5, fraction=0.42)
    np.testing.assert_array_equal(given.mask, mask)
    assert given.l0_per_px == 7.5 and given.fraction == 0.42


def test_stored_mask_any_non_zero_pixel_is_tissue(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2], [128, 0, 255]], dtype=np.uint8)
    path = tmp_path / "levels.png"
    Image.fromarray(values).save(path)
    tissue = load_tissue_mask_image(path, l0_per_px=4.0)
    np.testing.assert_array_equal(tissue.mask, values > 0)
    assert tissue.fraction == pytest.approx(4 / 6)


def test_stored_mask_matches_the_computed_one(
    synthetic_tumor: SyntheticSlide, tmp_path: Path
) -> None:
    with SlideReader(synthetic_tumor.path) as reader:
        computed = slide_tissue_mask(reader)
    path = tmp_path / "tissue.png"
    Image.fromarray(computed.mask).save(path)  # a bool array is saved as a 1-bit PNG
    stored = load_tissue_mask_image(path, l0_per_px=computed.l0_per_px)
    np.testing.assert_array_equal(stored.mask, computed.mask)
    assert stored.fraction == pytest.approx(computed.fraction)
    corners = np.random.default_rng(5).integers(0, 2048, size=(50, 2))
    np.testing.assert_allclose(
        stored.box_fractions(corners, 100.0), computed.box_fractions(corners, 100.0)
    )


@pytest.mark.parametrize("content", [None, b"\x89PNG not really a png" * 10, b""])
def test_unreadable_stored_mask(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidInputError, match="x.png") as info:
        load_tissue_mask_image(path, l0_per_px=16.0)
    assert info.value.details["path"] == str(path)


@pytest.mark.parametrize("l0_per_px", [0.0, -1.0, math.nan, math.inf])
def test_stored_mask_needs_a_positive_scale(tmp_path: Path, l0_per_px: float) -> None:
    path = tmp_path / "mask.png"
    _saved_mask(path)
    with pytest.raises(InvalidInputError, match="l0_per_px"):
        load_tissue_mask_image(path, l0_per_px=l0_per_px)


def test_stored_colour_mask_counts_every_non_zero_channel(tmp_path: Path) -> None:
    # A grey conversion would round these faint colours to 0 and lose them.
    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    rgb[0, 1] = (1, 0, 0)
    rgb[2, 3] = (0, 0, 2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    tissue = load_tissue_mask_image(tmp_path / "rgb.png", l0_per_px=4.0)
    expected = np.zeros((3, 4), dtype=bool)
    expected[0, 1] = expected[2, 3] = True
    np.testing.assert_array_equal(tissue.mask, expected)
    # Alpha alone is not tissue.
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[1, 2, 1] = 9
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert load_tissue_mask_image(tmp_path / "rgba.png", l0_per_px=4.0).mask.sum() == 1


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan])
def test_stored_mask_refuses_an_impossible_fraction(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "mask.png"
    _saved_mask(path)
    with pytest.raises(InvalidInputError, match="fraction"):
        load_tissue_mask_image(path, l0_per_px=4.0, fraction=fraction)
