"""Pool pixel histograms over slides: AUC over a whole test set, per slide, per organ.

Two AUCs per evaluation, as in the paper: "with background" counts every cell of the map (the
whole slide), "tissue" only the cells inside the slide's tissue mask. Both come from one pass over
the map (:func:`evaluation.metrics.auc.joint_counts`).

Pooling adds histograms, so the pooled AUC is the AUC of all slides' pixels concatenated, not a
mean of per-slide AUCs: a large slide weighs in proportion to its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy.typing as npt

from common.errors import InvalidInputError
from evaluation.metrics.auc import AucResult, Histogram, joint_counts


@dataclass(frozen=True)
class SlideHistograms:
    """One slide's counts: over all cells and over tissue cells."""

    slide_id: str
    location: str | None
    all: Histogram
    tissue: Histogram


@dataclass(frozen=True)
class AucPair:
    """The "with background" and "tissue" AUCs of a set of pixels."""

    all: AucResult
    tissue: AucResult
    n_slides: int


@dataclass(frozen=True)
class SlideAuc:
    slide_id: str
    location: str | None
    all: AucResult
    tissue: AucResult


def slide_histograms(
    slide_id: str,
    map_u8: npt.ArrayLike,
    truth: npt.ArrayLike,
    *,
    tissue: npt.ArrayLike,
    valid: npt.ArrayLike | None = None,
    location: str | None = None,
) -> SlideHistograms:
    """Count one slide's map against its truth, over all cells and over ``tissue`` cells.

    ``map_u8`` is the uint8 map, ``truth`` and ``tissue`` boolean masks of its shape; ``valid``
    (optional) removes cells from both counts (e.g. padding past the slide's edge).
    """
    masks: list[npt.ArrayLike] = [truth, tissue]
    if valid is not None:
        masks.append(valid)
    counts = joint_counts(map_u8, masks)  # axes: truth, tissue, [valid], value
    if valid is not None:
        counts = counts[:, :, 1]
    all_cells = counts.sum(axis=1)
    return SlideHistograms(
        slide_id=slide_id,
        location=location,
        all=Histogram(all_cells[1], all_cells[0]),
        tissue=Histogram(counts[1, 1], counts[0, 1]),
    )


class EvaluationAccumulator:
    """Collects slides' histograms; reports pooled, per-slide and per-location AUCs."""

    def __init__(self) -> None:
        self._slides: dict[str, SlideHistograms] = {}

    def __len__(self) -> int:
        return len(self._slides)

    @property
    def slides(self) -> tuple[SlideHistograms, ...]:
        """The slides added so far, in insertion order."""
        return tuple(self._slides.values())

    def add(self, entry: SlideHistograms) -> None:
        """Add a slide's histograms (computed here or loaded from a stored evaluation)."""
        if entry.slide_id in self._slides:
            # Counting a slide twice would double its weight in the pooled AUC.
            raise InvalidInputError(
                f"slide {entry.slide_id!r} was already added to this evaluation",
                details={"slide_id": entry.slide_id},
            )
        self._slides[entry.slide_id] = entry

    def add_slide(
        self,
        slide_id: str,
        map_u8: npt.ArrayLike,
        truth: npt.ArrayLike,
        *,
        tissue: npt.ArrayLike,
        valid: npt.ArrayLike | None = None,
        location: str | None = None,
    ) -> SlideHistograms:
        """Count a slide's map (see :func:`slide_histograms`) and add it."""
        if slide_id in self._slides:
            raise InvalidInputError(
                f"slide {slide_id!r} was already added to this evaluation",
                details={"slide_id": slide_id},
            )
        entry = slide_histograms(
            slide_id, map_u8, truth, tissue=tissue, valid=valid, location=location
        )
        self.add(entry)
        return entry

    @staticmethod
    def _sum(entries: list[SlideHistograms]) -> tuple[Histogram, Histogram]:
        all_h, tissue_h = Histogram(), Histogram()
        for e in entries:
            all_h += e.all
            tissue_h += e.tissue
        return all_h, tissue_h

    @classmethod
    def _pool(cls, entries: list[SlideHistograms]) -> AucPair:
        all_h, tissue_h = cls._sum(entries)
        return AucPair(all=all_h.auc_result(), tissue=tissue_h.auc_result(), n_slides=len(entries))

    def pooled_histograms(self) -> tuple[Histogram, Histogram]:
        """(all cells, tissue cells) histograms summed over every slide."""
        return self._sum(list(self._slides.values()))

    def pooled(self) -> AucPair:
        """AUCs of every slide's pixels together."""
        return self._pool(list(self._slides.values()))

    def per_slide(self) -> list[SlideAuc]:
        """Each slide's own AUCs, in insertion order (undefined for a slide without tumor)."""
        return [
            SlideAuc(
                slide_id=e.slide_id,
                location=e.location,
                all=e.all.auc_result(),
                tissue=e.tissue.auc_result(),
            )
            for e in self._slides.values()
        ]

    def per_location(self) -> dict[str, AucPair]:
        """Pooled AUCs per location (organ); slides without a location are under ``""``."""
        groups: dict[str, list[SlideHistograms]] = {}
        for e in self._slides.values():
            groups.setdefault(e.location or "", []).append(e)
        return {loc: self._pool(entries) for loc, entries in sorted(groups.items())}
