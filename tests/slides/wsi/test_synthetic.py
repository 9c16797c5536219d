from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import shapely

from common.errors import InvalidInputError
from slides.wsi import synthetic as synthetic_module
from slides.wsi.reader import SlideReader
from slides.wsi.synthetic import (
    SyntheticSlide,
    generate_slide,
    tissue_truth_mask,
    truth_mask,
    write_demo_cohort,
)


def _rasterise(slide: SyntheticSlide) -> np.ndarray:
    """The polygons sampled at the truth raster's pixel centres."""
    h, w = slide.truth.shape
    f = slide.truth_l0_per_px
    ys, xs = np.mgrid[0:h, 0:w]
    inside = np.zeros(h * w, dtype=bool)
    for polygon in slide.polygons:
        inside |= shapely.contains_xy(polygon, ((xs + 0.5) * f).ravel(), ((ys + 0.5) * f).ravel())
    return inside.reshape(h, w)


def test_slide_opens_as_aperio_with_resolution_and_levels(synthetic_tumor: SyntheticSlide) -> None:
    with SlideReader(synthetic_tumor.path) as reader:
        meta = reader.metadata
        thumb = reader.thumbnail(256)
    assert meta.vendor == "aperio"
    assert (meta.l0_width, meta.l0_height) == (2048, 1536)
    assert (meta.mpp, meta.mpp_assumed, meta.objective_power) == (0.5, False, 20.0)
    assert meta.level_dimensions == ((2048, 1536), (512, 384))
    assert meta.level_downsamples == (1.0, 4.0)
    # White glass around the tissue.
    assert (thumb[:3, :3] > 235).all() and (thumb[-3:, -3:] > 235).all()


def test_truth_and_polygons_agree(synthetic_tumor: SyntheticSlide) -> None:
    slide = synthetic_tumor
    assert slide.label == "tumor"
    assert 0.05 <= slide.tumor_fraction <= 0.8
    assert slide.truth.dtype == bool and slide.truth_l0_per_px == 8.0
    assert slide.truth.shape == (1536 // 8, 2048 // 8)
    assert not (slide.truth & ~slide.tissue).any()
    assert slide.tumor_fraction == pytest.approx(slide.truth.sum() / slide.tissue.sum())
    assert slide.polygons and all(p.is_valid and p.area > 0 for p in slide.polygons)
    drawn = _rasterise(slide)
    iou = (drawn & slide.truth).sum() / (drawn | slide.truth).sum()
    assert iou > 0.97
    area = sum(p.area for p in slide.polygons) / slide.truth_l0_per_px**2
    assert area == pytest.approx(slide.truth.sum(), rel=0.05)


def test_truth_mask_at_other_scales(synthetic_tumor: SyntheticSlide) -> None:
    slide = synthetic_tumor
    fine = truth_mask(slide, 4.0)
    assert fine.shape == (384, 512)
    np.testing.assert_array_equal(fine[::2, ::2], slide.truth)
    coarse = truth_mask(slide, 32.0)
    assert coarse.shape == (48, 64)
    assert coarse.mean() == pytest.approx(slide.truth.mean(), abs=0.02)
    odd = truth_mask(slide, 30.0)
    assert odd.shape == (math.ceil(1536 / 30), math.ceil(2048 / 30))
    assert tissue_truth_mask(slide, 8.0).sum() == slide.tissue.sum()
    with pytest.raises(InvalidInputError):
        truth_mask(slide, 0.0)


def test_normal_slide_has_no_tumor(synthetic_normal: SyntheticSlide) -> None:
    slide = synthetic_normal
    assert slide.label == "normal"
    assert slide.polygons == [] and not slide.truth.any() and slide.tumor_fraction == 0.0
    assert 0.2 < slide.tissue.mean() < 0.8


def test_tumor_fraction_stays_within_bounds(tmp_path: Path) -> None:
    fractions = [
        generate_slide(
            tmp_path / "s.svs", seed=seed, tumor=True, width=768, height=640
        ).tumor_fraction
        for seed in range(12)
    ]
    assert all(0.05 <= f <= 0.8 for f in fractions)
    assert max(fractions) - min(fractions) > 0.2  # the share varies from slide to slide


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_slide(tmp_path / "a.svs", seed=3, tumor=True, width=640, height=512)
    again = generate_slide(tmp_path / "b.svs", seed=3, tumor=True, width=640, height=512)
    other = generate_slide(tmp_path / "c.svs", seed=4, tumor=True, width=640, height=512)
    assert first.path.read_bytes() == again.path.read_bytes()
    np.testing.assert_array_equal(first.truth, again.truth)
    assert first.path.read_bytes() != other.path.read_bytes()


def test_the_image_does_not_depend_on_the_render_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several bands (BAND_ROWS each) so that threads really render them side by side.
    height = 3 * synthetic_module.BAND_ROWS + 100
    threaded = generate_slide(tmp_path / "t.svs", seed=5, tumor=True, width=700, height=height)
    monkeypatch.setattr(synthetic_module, "_render_threads", lambda _width: 1)
    single = generate_slide(tmp_path / "s.svs", seed=5, tumor=True, width=700, height=height)
    assert threaded.path.read_bytes() == single.path.read_bytes()


def test_tumor_is_visible_in_small_patches(synthetic_tumor: SyntheticSlide) -> None:
    """Tumor must be learnable from 32 px patches at 1 um/px: even one crude hand-made feature
    (the share of haematoxylin-dark pixels) ranks tumor above normal tissue patches."""
    slide = synthetic_tumor
    with SlideReader(slide.path) as reader:
        image = reader.read_scaled(2.0)  # 1 um/px
    dark = (image.min(axis=2) < 120) & (image[..., 2] > image[..., 1])
    size = 32  # px at 1 um/px = 64 l0 px = 8 truth px
    rows, cols = image.shape[0] // size, image.shape[1] // size
    share = dark[: rows * size, : cols * size].reshape(rows, size, cols, size).mean(axis=(1, 3))
    truth = slide.truth[: rows * 8, : cols * 8].reshape(rows, 8, cols, 8).mean(axis=(1, 3))
    tissue = slide.tissue[: rows * 8, : cols * 8].reshape(rows, 8, cols, 8).mean(axis=(1, 3))
    tumor_scores = share[truth == 1.0]
    normal_scores = share[(truth == 0.0) & (tissue == 1.0)]
    assert len(tumor_scores) > 20 and len(normal_scores) > 20
    # Rank AUC of the feature.
    auc = (tumor_scores[:, None] > normal_scores[None, :]).mean()
    assert auc > 0.9


def test_invalid_sizes(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        generate_slide(tmp_path / "x.svs", seed=0, tumor=False, width=100, height=100)
    with pytest.raises(InvalidInputError):
        generate_slide(tmp_path / "x.svs", seed=0, tumor=False, mpp=0.0)
    with pytest.raises(InvalidInputError):
        write_demo_cohort(tmp_path, n_slides=0)


def test_demo_cohort_files(tmp_path: Path) -> None:
    slides = write_demo_cohort(
        tmp_path / "cohort", n_slides=4, seed=1, width=768, height=640, write_asap_xml=True
    )
    folder = tmp_path / "cohort"
    assert [s.path.name for s in slides] == [f"demo_{i:03d}.svs" for i in range(4)]
    assert [s.label for s in slides] == ["tumor", "normal", "tumor", "normal"]
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["filename", "label", "case_id", "location"]
    assert [(r["filename"], r["label"], r["case_id"]) for r in rows] == [
        ("demo_000.svs", "tumor", "DEMO-0000"),
        ("demo_001.svs", "normal", "DEMO-0000"),
        ("demo_002.svs", "tumor", "DEMO-0001"),
        ("demo_003.svs", "normal", "DEMO-0001"),
    ]
    assert rows[0]["location"] != rows[2]["location"]
    for slide in slides:
        geojson = json.loads((folder / f"{slide.path.name}.geojson").read_text(encoding="utf-8"))
        assert geojson["type"] == "FeatureCollection"
        assert len(geojson["features"]) == len(slide.polygons)
        shapes = [shapely.geometry.shape(f["geometry"]) for f in geojson["features"]]
        assert sum(s.area for s in shapes) == pytest.approx(sum(p.area for p in slide.polygons))
        root = ET.fromstring((folder / f"{slide.path.stem}.xml").read_text(encoding="utf-8"))
        tumor = [a for a in root.iter("Annotation") if a.get("PartOfGroup") == "Tumor"]
        assert len(tumor) == len(slide.polygons)
        with SlideReader(slide.path) as reader:
            assert reader.metadata.vendor == "aperio"
    assert slides[0].polygons and not slides[1].polygons
    # Earlier slides do not depend on how many are made.
    fewer = write_demo_cohort(tmp_path / "two", n_slides=2, seed=1, width=768, height=640)
    np.testing.assert_array_equal(fewer[0].truth, slides[0].truth)


def test_40x_slide(tmp_path: Path) -> None:
    slide = generate_slide(
        tmp_path / "x40.svs",
        seed=2,
        tumor=True,
        width=1024,
        height=1024,
        mpp=0.25,
        objective_power=40,
    )
    with SlideReader(slide.path) as reader:
        assert (reader.metadata.mpp, reader.metadata.objective_power) == (0.25, 40.0)
    # Same microns per truth pixel as at 20x.
    assert slide.truth_l0_per_px == 16.0 and slide.truth.shape == (64, 64)
