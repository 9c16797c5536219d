"""Thumbnails and tissue masks of slides, stored as images under ARTIFACTS_DIR."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from django.conf import settings
from PIL import Image

from common.errors import TumorMapError
from slides.models import Slide, SlideState
from slides.wsi.reader import open_slide
from slides.wsi.tissue import TissueMask, slide_tissue_mask

# Large enough for a cohort table and the viewer's overview, small enough to send in a list.
THUMBNAIL_MAX_SIDE = 1024


def slide_artifact_dir(slide: Slide) -> Path:
    return Path(settings.ARTIFACTS_DIR) / "slides" / str(slide.cohort_id) / str(slide.pk)


def _save_image_atomic(image: Image.Image, path: Path) -> None:
    """Write to a temporary file and rename: a reader never sees half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        image.save(tmp)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tissue_mask(slide: Slide) -> TissueMask | None:
    """The stored tissue mask of a slide, or None when it was not computed yet."""
    if not slide.tissue_mask or slide.tissue_l0_per_px is None:
        return None
    mask = np.asarray(Image.open(Path(settings.ARTIFACTS_DIR) / slide.tissue_mask)) > 0
    return TissueMask(
        mask=mask,
        l0_per_px=slide.tissue_l0_per_px,
        fraction=float(slide.tissue_fraction or mask.mean()),
    )


def slide_compute_tissue(*, slide: Slide, force: bool = False) -> Slide:
    """Compute and store the thumbnail and the tissue mask of a ready slide.

    A slide that turns out unreadable is recorded as such with the reason.
    """
    if slide.state != SlideState.READY:
        return slide
    if slide.thumbnail and slide.tissue_mask and not force:
        return slide
    folder = slide_artifact_dir(slide)
    try:
        with open_slide(slide.file_path, default_mpp=slide.mpp) as reader:
            thumbnail = reader.thumbnail(THUMBNAIL_MAX_SIDE)
            tissue = slide_tissue_mask(reader)
    except TumorMapError as exc:
        slide.state = SlideState.UNREADABLE
        slide.error_message = exc.message
        slide.save(update_fields=["state", "error_message", "updated_at"])
        return slide
    _save_image_atomic(Image.fromarray(thumbnail), folder / "thumbnail.jpg")
    _save_image_atomic(
        Image.fromarray(tissue.mask.astype(np.uint8) * 255), folder / "tissue_mask.png"
    )
    root = Path(settings.ARTIFACTS_DIR)
    slide.thumbnail = str((folder / "thumbnail.jpg").relative_to(root))
    slide.tissue_mask = str((folder / "tissue_mask.png").relative_to(root))
    slide.tissue_fraction = tissue.fraction
    slide.tissue_l0_per_px = tissue.l0_per_px
    slide.save(
        update_fields=[
            "thumbnail", "tissue_mask", "tissue_fraction", "tissue_l0_per_px", "updated_at",
        ]
    )  # fmt: skip
    return slide
