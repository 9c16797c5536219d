"""Storing pathologists' contours and reading them back as the engine's AnnotationSet."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth.models import User
from django.db import transaction
from shapely.geometry import mapping, shape

from common.errors import AnnotationError, InvalidInputError
from slides.models import Annotation, Cohort, Slide
from slides.wsi.annotations import AnnotationSet, Contour, match_slide_name, read_annotations


@dataclass(frozen=True)
class AnnotationImport:
    file: str
    slide: str
    contours: int
    vertices: int
    warnings: tuple[str, ...]


def annotation_set_for(slide: Slide) -> AnnotationSet:
    """The stored contours of a slide, as the Django-free AnnotationSet."""
    contours = tuple(
        Contour(
            geometry=shape(a.geometry),
            label=a.label,
            name=a.name,
            author=a.author or None,
            source=a.source_format or "stored",
        )
        for a in Annotation.objects.filter(slide=slide).order_by("pk")
    )
    return AnnotationSet(contours=contours, source_format="stored")


def _rows(slide: Slide, annset: AnnotationSet, source_file: str, author: str,
          user: User | None) -> list[Annotation]:  # fmt: skip
    return [
        Annotation(
            slide=slide,
            label=c.label,
            name=c.name[:200],
            author=(c.author or author)[:150],
            source_format=annset.source_format,
            source_file=source_file,
            geometry=mapping(c.geometry),
            n_vertices=c.n_vertices,
            l0_area=float(c.geometry.area),
            created_by=user,
        )
        for c in annset.contours
    ]


def annotations_import_files(
    *,
    cohort: Cohort,
    files: Iterable[Path],
    slide_name: str | None = None,
    author: str = "",
    user: User | None = None,
) -> list[AnnotationImport]:
    """Import contour files of a cohort, all or nothing.

    Each file goes to the slide named by ``slide_name`` or to the slide its name matches
    (``<slide file name>.geojson``, ``<slide stem>.xml``). Every file is parsed and matched
    before anything is written; one bad file refuses the whole import, naming each problem.
    Importing a file again replaces the contours it brought the first time.
    """
    slides = {s.original_filename: s for s in Slide.objects.filter(cohort=cohort)}
    parsed: list[tuple[Path, Slide, AnnotationSet]] = []
    problems: list[str] = []
    for path in files:
        name = slide_name or match_slide_name(path.name, slides)
        slide = slides.get(name) if name else None
        if slide is None:
            problems.append(
                f"{path.name}: no slide named {slide_name!r} in {cohort.name}"
                if slide_name
                else f"{path.name}: matches no slide of {cohort.name} by name (use --slide)"
            )
            continue
        try:
            parsed.append((path, slide, read_annotations(path)))
        except AnnotationError as exc:
            problems.append(exc.message)
    if problems:
        raise AnnotationError(
            "Nothing was imported: " + "; ".join(problems), details={"problems": problems}
        )
    if not parsed:
        raise InvalidInputError("No contour file was given.")
    results = []
    with transaction.atomic():
        for path, slide, annset in parsed:
            Annotation.objects.filter(slide=slide, source_file=path.name).delete()
            Annotation.objects.bulk_create(_rows(slide, annset, path.name, author, user))
            results.append(
                AnnotationImport(
                    file=path.name,
                    slide=slide.original_filename,
                    contours=len(annset.contours),
                    vertices=annset.n_vertices,
                    warnings=annset.warnings,
                )
            )
    return results
