from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import ConflictError
from slides.models import Slide
from slides.services import cohort_import, cohort_split, register_split_guard
from slides.services import splits as split_service
from slides.wsi.label_files import parse_gdc_manifest

pytestmark = pytest.mark.django_db
MANIFEST = "manifests/gdc_manifest_tcga_frozen_breast_kidney_lung.txt"


@pytest.fixture
def imported(cohort, shared_data: Path):  # type: ignore[no-untyped-def]
    rows = parse_gdc_manifest((shared_data / MANIFEST).read_bytes())[:400]
    cohort_import(cohort=cohort, manifest=rows)
    return cohort


@pytest.fixture
def guards() -> Iterator[list]:  # type: ignore[type-arg]
    saved = list(split_service._split_guards)
    yield split_service._split_guards
    split_service._split_guards[:] = saved


def snapshot() -> dict[str, str]:
    return dict(Slide.objects.values_list("original_filename", "split"))


def test_same_seed_same_split_other_seed_other_split(imported) -> None:  # type: ignore[no-untyped-def]
    before = snapshot()
    cohort_split(cohort=imported, seed=0)
    assert snapshot() == before  # the import used seed 0 too
    cohort_split(cohort=imported, seed=1)
    assert snapshot() != before


def test_refuses_to_move_trained_cases_unless_forced(imported, guards) -> None:  # type: ignore[no-untyped-def]
    trained = {
        s.case.submitter_id
        for s in Slide.objects.filter(cohort=imported, split="train").select_related("case")[:20]
    }
    register_split_guard(lambda cohort: trained)
    before = snapshot()
    with pytest.raises(ConflictError, match="trained runs") as info:
        cohort_split(cohort=imported, seed=1)
    assert set(info.value.details["cases"]) <= trained
    assert snapshot() == before  # nothing half-written
    cohort_split(cohort=imported, seed=1, force=True)
    assert snapshot() != before


def test_guard_does_not_block_a_split_that_keeps_its_cases(imported, guards) -> None:  # type: ignore[no-untyped-def]
    register_split_guard(lambda cohort: {c.submitter_id for c in cohort.cases.all()})
    cohort_split(cohort=imported, seed=0)  # identical assignment: nothing moves
