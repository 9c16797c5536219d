"""Case-level splits of a cohort into train / val / test."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from django.db import transaction

from common.errors import ConflictError
from slides.models import Cohort, Slide, Split
from slides.wsi.splits import PAPER_RATIOS, split_cases

# Later stages (training) register a function naming the cases whose split must not move
# because models were already trained on them; slides never imports those stages.
SplitGuard = Callable[[Cohort], set[str]]
_split_guards: list[SplitGuard] = []


def register_split_guard(guard: SplitGuard) -> None:
    if guard not in _split_guards:
        _split_guards.append(guard)


def split_unit(slide: Slide) -> str:
    """The unit that is never divided between splits: the case, or the slide when it has none."""
    if slide.case is not None:
        return slide.case.submitter_id
    return f"slide:{slide.original_filename}"


def _strata(slides: Iterable[Slide]) -> dict[str, str]:
    labels: dict[str, set[str]] = defaultdict(set)
    locations: dict[str, str] = {}
    for slide in slides:
        unit = split_unit(slide)
        labels[unit].add(slide.label)
        locations.setdefault(unit, slide.location)
    return {unit: f"{locations[unit]}|{'+'.join(sorted(labels[unit]))}" for unit in labels}


def split_counts(cohort: Cohort) -> dict[str, int]:
    counts = dict.fromkeys(Split.values, 0)
    for split in Slide.objects.filter(cohort=cohort).values_list("split", flat=True):
        counts[split] += 1
    return counts


@transaction.atomic
def cohort_split(
    *,
    cohort: Cohort,
    ratios: tuple[float, float, float] = PAPER_RATIOS,
    seed: int = 0,
    force: bool = False,
    only_unassigned: bool = False,
) -> dict[str, str]:
    """Assign each case of the cohort to train / val / test, stratified by location and label.

    Splits given by a label file are kept. With ``only_unassigned`` only units that have no
    split yet are placed (a re-import never reshuffles). A case that already has trained runs
    is never moved unless ``force``. Returns the unit -> split assignment that was written.
    """
    slides = list(
        Slide.objects.select_for_update(of=("self",)).filter(cohort=cohort).select_related("case")
    )
    locked = {split_unit(s): s.split for s in slides if s.split_locked}
    current: dict[str, str] = {}
    for slide in slides:
        current.setdefault(split_unit(slide), slide.split)
    movable = [
        s
        for s in slides
        if split_unit(s) not in locked
        and not (only_unassigned and current[split_unit(s)] != Split.UNASSIGNED)
    ]
    assignment = split_cases(_strata(movable), ratios=ratios, seed=seed)
    assignment.update(locked)

    moved = {
        unit
        for unit, split in assignment.items()
        if current.get(unit, Split.UNASSIGNED) not in (Split.UNASSIGNED, split)
    }
    protected: set[str] = set()
    for guard in _split_guards:
        protected |= guard(cohort)
    blocked = sorted(moved & protected)
    if blocked and not force:
        raise ConflictError(
            f"{len(blocked)} case(s) already have trained runs and would change split "
            f"(e.g. {', '.join(blocked[:5])}); pass force to re-split anyway.",
            details={"cases": blocked},
        )
    changed = []
    for slide in slides:
        split = assignment.get(split_unit(slide))
        if split is not None and slide.split != split:
            slide.split = split
            changed.append(slide)
    Slide.objects.bulk_update(changed, ["split"], batch_size=1000)
    return assignment
