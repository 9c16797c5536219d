"""Fixtures for the Django-free slide tools: the real shared slides and small synthetic ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slides.wsi.reader import clear_slide_cache
from slides.wsi.synthetic import SyntheticSlide, generate_slide

# Synthetic slides for tests are small: ~1 x 0.75 mm, enough tissue for hundreds of patches.
SMALL_WIDTH = 2048
SMALL_HEIGHT = 1536


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    return shared_data / "slides"


@pytest.fixture(scope="session")
def cmu_slide(slides_dir: Path) -> Path:
    """Aperio 20x, 2220x2967, 0.499 um/px, one level, label/macro/thumbnail images."""
    return slides_dir / "cmu-1-small-region.svs"


@pytest.fixture(scope="session")
def tcga_slide(slides_dir: Path) -> Path:
    """Real TCGA frozen section, 2 levels, JPEG 2000, no resolution metadata."""
    return slides_dir / "tcga-cr-7395-01a-01-ts1.svs"


@pytest.fixture(scope="session")
def broken_slide(slides_dir: Path) -> Path:
    return slides_dir / "broken.svs"


@pytest.fixture(scope="session")
def gdc_manifest(shared_data: Path) -> Path:
    return shared_data / "manifests" / "gdc_manifest_tcga_frozen_breast_kidney_lung.txt"


@pytest.fixture(scope="session")
def synthetic_tumor(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    folder = tmp_path_factory.mktemp("synthetic")
    return generate_slide(
        folder / "tumor.svs", seed=11, tumor=True, width=SMALL_WIDTH, height=SMALL_HEIGHT
    )


@pytest.fixture(scope="session")
def synthetic_normal(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    folder = tmp_path_factory.mktemp("synthetic")
    return generate_slide(
        folder / "normal.svs", seed=12, tumor=False, width=SMALL_WIDTH, height=SMALL_HEIGHT
    )


@pytest.fixture(autouse=True)
def _fresh_slide_cache() -> Iterator[None]:
    """Every test starts and ends with an empty handle cache (tests may count handles)."""
    clear_slide_cache()
    yield
    clear_slide_cache()
