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
from slides.wsi.tissue import TissueMask, load_tissue_mask_image, slide_tissue_mask

# Large enough for a cohort table and the viewer's overview, small enough to send in a list.
THUMBNAIL_MAX_SIDE = 1024
# The tile server cuts the coarse DeepZoom levels from this image (slides/tiles.py): reading
# it takes a few hundred milliseconds on a slide without a pyramid, paid once here instead of
# in every web process while a viewer waits. JPEG at this quality is ~1 MB per slide.
OVERVIEW_MAX_SIDE = 2048
OVERVIEW_JPEG_QUALITY = 92
OVERVIEW_NAME = "overview.jpg"


def overview_l0_per_px(l0_width: int, l0_height: int) -> float:
    """Level-0 pixels per overview pixel: the longer side at OVERVIEW_MAX_SIDE, never upscaled."""
    return max(1.0, max(l0_width, l0_height) / OVERVIEW_MAX_SIDE)


def slide_artifact_dir(slide: Slide) -> Path:
    return Path(settings.ARTIFACTS_DIR) / "slides" / str(slide.cohort_id) / str(slide.pk)


def _save_image_atomic(image: Image.Image, path: Path, *, quality: int | None = None) -> None:
    """Write to a temporary file and rename: a reader never sees half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        if quality is None:
            image.save(tmp)
        else:
            image.save(tmp, quality=quality)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stored_overview_path(slide: Slide) -> Path:
    """Where the tissue task stores the slide's overview (it may not exist yet)."""
    return slide_artifact_dir(slide) / OVERVIEW_NAME


def load_tissue_mask(slide: Slide) -> TissueMask | None:
    """The stored tissue mask of a slide, or None when it was not computed yet."""
    path = tissue_mask_path(slide)
    if path is None or slide.tissue_l0_per_px is None:
        return None
    return load_tissue_mask_image(
        path, l0_per_px=slide.tissue_l0_per_px, fraction=slide.tissue_fraction
    )


def tissue_mask_path(slide: Slide) -> Path | None:
    """Where the slide's stored tissue mask lies, or None when it was not computed yet."""
    if not slide.tissue_mask or slide.tissue_l0_per_px is None:
        return None
    return Path(settings.ARTIFACTS_DIR) / slide.tissue_mask


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
            meta = reader.metadata
            overview = reader.read_scaled(overview_l0_per_px(meta.l0_width, meta.l0_height))
    except TumorMapError as exc:
        slide.state = SlideState.UNREADABLE
        slide.error_message = exc.message
        slide.save(update_fields=["state", "error_message", "updated_at"])
        return slide
    _save_image_atomic(Image.fromarray(thumbnail), folder / "thumbnail.jpg")
    _save_image_atomic(
        Image.fromarray(overview), folder / OVERVIEW_NAME, quality=OVERVIEW_JPEG_QUALITY
    )
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
