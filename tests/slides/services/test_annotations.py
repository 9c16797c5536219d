from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import shape

from common.errors import AnnotationError
from slides.models import Annotation, Slide
from slides.services.annotations import annotation_set_for, annotations_import_files
from slides.wsi.annotations import parse_geojson, to_geojson

pytestmark = pytest.mark.django_db
CAMELYON = "annotations/camelyon16"


@pytest.fixture
def camelyon_cohort(cohort):  # type: ignore[no-untyped-def]
    for name in ("Tumor_001.tif", "Tumor_039.tif", "Normal_001.tif"):
        Slide.objects.create(cohort=cohort, original_filename=name)
    return cohort


def test_files_matched_by_name_and_round_trip(camelyon_cohort, shared_data: Path) -> None:
    files = [shared_data / CAMELYON / "tumor_001.xml", shared_data / CAMELYON / "Tumor_039.json"]
    results = annotations_import_files(cohort=camelyon_cohort, files=files, author="pathologist A")
    assert [(r.file, r.slide) for r in results] == [
        ("tumor_001.xml", "Tumor_001.tif"), ("Tumor_039.json", "Tumor_039.tif"),
    ]  # fmt: skip
    t1 = Slide.objects.get(original_filename="Tumor_001.tif")
    stored = Annotation.objects.filter(slide=t1)
    assert stored.count() == 2
    # 855 and 1,657 coordinates, closed (+1 each); the second ring touches itself once and is
    # repaired at the repeated vertex, with a warning.
    assert sorted(a.n_vertices for a in stored) == [856, 1656]
    assert any("repaired" in w for w in results[0].warnings)
    assert {a.author for a in stored} == {"pathologist A"}
    # Stored -> GeoJSON -> parsed again gives the very same geometries.
    again = parse_geojson(json.loads(json.dumps(to_geojson(annotation_set_for(t1)))))
    for original, back in zip(stored.order_by("pk"), again.contours, strict=True):
        assert shape(original.geometry).equals_exact(back.geometry, 0)


def test_reimport_replaces_and_bad_file_imports_nothing(
    camelyon_cohort, shared_data: Path, tmp_path: Path
) -> None:
    good = shared_data / CAMELYON / "Tumor_039.json"
    annotations_import_files(cohort=camelyon_cohort, files=[good])
    count = Annotation.objects.count()
    annotations_import_files(cohort=camelyon_cohort, files=[good])
    assert Annotation.objects.count() == count  # replaced, not doubled
    broken = tmp_path / "Normal_001.json"
    broken.write_text('{"positive": [{"name": "a", "vertices": [[0, 0], [1')
    stray = tmp_path / "Unknown_999.xml"
    stray.write_text("<ASAP_Annotations/>")
    with pytest.raises(AnnotationError) as info:
        annotations_import_files(
            cohort=camelyon_cohort, files=[shared_data / CAMELYON / "tumor_001.xml", broken, stray]
        )
    assert "Normal_001.json" in info.value.message and "Unknown_999.xml" in info.value.message
    assert Annotation.objects.count() == count  # tumor_001.xml was not imported either
