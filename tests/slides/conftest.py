from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from slides.models import Cohort
from slides.services import cohort_create


@pytest.fixture
def owner(db):  # type: ignore[no-untyped-def]
    return get_user_model().objects.create_user("owner", password="pw-owner-123")


@pytest.fixture
def admin_user_(db):  # type: ignore[no-untyped-def]
    return get_user_model().objects.create_superuser("root", password="pw-root-123")


@pytest.fixture
def cohort(owner) -> Cohort:  # type: ignore[no-untyped-def]
    return cohort_create(name="lung-study", owner=owner)


@pytest.fixture
def real_slides_dir(shared_data: Path, tmp_path: Path) -> Path:
    """The two real slides, the broken file and a text file named .svs, side by side."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs", "broken.svs"):
        (folder / name).symlink_to(shared_data / "slides" / name)
    (folder / "notes.svs").write_text("This is a text file, not a slide.\n")
    (folder / "labels-draft.csv").write_text("filename,label\n")
    return folder
