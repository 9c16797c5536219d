"""The report page of a cohort: the paper's Table 1 as coloured alpha x beta grids, the ROC and
precision-recall curves, per-location scores and the downloads."""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from evaluation.metrics.auc import Histogram
from evaluation.metrics.curves import plot_roc_pr
from evaluation.metrics.report import ALPHAS, BETAS, ReportRow
from evaluation.models import Evaluation
from evaluation.reports import report_rows
from slides.models import Slide
from slides.views import cohort_for_page, page_errors
from training import selectors as training_selectors
from training.models import Sweep, TrainingRun

SPLITS = (("test", "Test"), ("val", "Validation"))
# (subset, metric, title): "all" pools every slide of the split, the other two are the paper's.
PANELS = (
    ("all", "auc_tissue", "All slides, tissue"),
    ("all", "auc_all", "All slides, with background"),
    ("in_distribution", "auc_tissue", "In-distribution, tissue"),
    ("in_distribution", "auc_all", "In-distribution, with background"),
    ("out_of_location", "auc_tissue", "Out-of-location, tissue"),
    ("out_of_location", "auc_all", "Out-of-location, with background"),
)
# Cell colours from red (AUC 0.5, chance) through yellow to green (1.0), as in the paper's
# colour scale; values under 0.5 are red.
_COLOUR_STOPS = ((0.5, (215, 48, 39)), (0.75, (254, 224, 139)), (1.0, (26, 152, 80)))


def auc_colour(value: float) -> str:
    """A CSS colour for an AUC on the red-yellow-green scale."""
    value = min(max(value, _COLOUR_STOPS[0][0]), _COLOUR_STOPS[-1][0])
    for (lo, c0), (hi, c1) in itertools.pairwise(_COLOUR_STOPS):
        if value <= hi:
            t = (value - lo) / (hi - lo)
            r, g, b = (round(a + (b - a) * t) for a, b in zip(c0, c1, strict=True))
            return f"rgb({r}, {g}, {b})"
    raise AssertionError("unreachable")


def _value(row: ReportRow, subset: str, metric: str) -> float | None:
    value: float | None = (
        getattr(row, metric) if subset == "all" else row.panel_value(subset, metric)
    )
    return value if value is not None and math.isfinite(value) else None


def _key(value: float) -> int:
    return round(value * 100)


def report_panels(rows: Sequence[ReportRow]) -> list[dict[str, Any]]:
    """Each panel as table rows (beta, top to bottom) of cells (alpha); the best run wins a
    configuration trained more than once."""
    panels = []
    for subset, metric, title in PANELS:
        best: dict[tuple[int, int], ReportRow] = {}
        for row in rows:
            value = _value(row, subset, metric)
            if value is None:
                continue
            key = (_key(row.alpha), _key(row.beta))
            current = best.get(key)
            if current is None or value > (_value(current, subset, metric) or -math.inf):
                best[key] = row
        status = {(_key(r.alpha), _key(r.beta)): r.status for r in rows}
        scored = {(_key(r.alpha), _key(r.beta)) for r in rows if r.n_slides}
        table = []
        for beta in BETAS:
            cells = []
            for alpha in ALPHAS:
                key = (_key(alpha), _key(beta))
                chosen = best.get(key)
                value = _value(chosen, subset, metric) if chosen else None
                cells.append(
                    {
                        "alpha": alpha,
                        "beta": beta,
                        "valid": key[0] + key[1] <= 100,
                        "value": value,
                        "run": chosen.run if chosen else None,
                        "status": status.get(key, ""),
                        # Scored, but the split has no slide of this subset (e.g. no
                        # out-of-location slide).
                        "no_slides": key in scored and value is None,
                        "colour": auc_colour(value) if value is not None else "",
                    }
                )
            table.append({"beta": beta, "cells": cells})
        panels.append(
            {
                "id": f"{subset}-{metric}".replace("_", "-"),
                "title": title,
                "rows": table,
                "filled": len(best),
            }
        )
    return panels


def _runs(request: HttpRequest, cohort_id: int, sweep_id: int | None) -> list[TrainingRun]:
    with page_errors():
        return training_selectors.report_runs(
            user=request.user, cohort_id=None if sweep_id else cohort_id, sweep_id=sweep_id
        )


def _params(request: HttpRequest) -> tuple[str, int | None]:
    split = request.GET.get("split", "test")
    if split not in dict(SPLITS):
        split = "test"
    sweep = request.GET.get("sweep", "")
    return split, int(sweep) if sweep.isdigit() else None


def _per_location(evaluations: Sequence[Evaluation], train_locations: set[str]) -> dict[str, Any]:
    locations = sorted({loc for e in evaluations for loc in (e.details.get("per_location") or {})})
    rows = []
    for e in sorted(evaluations, key=lambda e: (e.run.alpha, e.run.beta, e.run_id)):
        per = e.details.get("per_location") or {}
        rows.append(
            {
                "run": e.run,
                "cells": [per.get(loc) for loc in locations],
            }
        )
    return {
        "locations": [{"name": loc, "seen": loc in train_locations} for loc in locations],
        "rows": rows,
    }


@login_required
@require_GET
def cohort_report_page(request: HttpRequest, cohort_id: int) -> HttpResponse:
    cohort = cohort_for_page(request, cohort_id)
    split, sweep_id = _params(request)
    sweeps = list(Sweep.objects.filter(cohort=cohort).order_by("-created_at"))
    if sweep_id is not None and sweep_id not in {s.pk for s in sweeps}:
        sweep_id = None
    runs = _runs(request, cohort.pk, sweep_id)
    rows = report_rows(runs, split)
    evaluations = list(Evaluation.objects.filter(run__in=runs, split=split).select_related("run"))
    train_locations = set(
        Slide.objects.filter(cohort=cohort, split="train").values_list("location", flat=True)
    )
    query = f"cohort={cohort.pk}&split={split}" + (f"&sweep={sweep_id}" if sweep_id else "")
    missing = sorted({name for e in evaluations for name in e.details.get("missing_contours", [])})
    return render(
        request,
        "reports/cohort_report.html",
        {
            "cohort": cohort,
            "split": split,
            "splits": SPLITS,
            "sweeps": sweeps,
            "sweep_id": sweep_id,
            "alphas": ALPHAS,
            "panels": report_panels(rows),
            "rows": rows,
            "evaluated": len(evaluations),
            "has_curves": any("histograms" in e.details for e in evaluations),
            "per_location": _per_location(evaluations, train_locations),
            "train_locations": sorted(loc for loc in train_locations if loc),
            "missing_contours": missing,
            "query": query,
        },
    )


@login_required
@require_GET
def cohort_report_curves(request: HttpRequest, cohort_id: int) -> HttpResponse:
    """ROC and precision-recall curves of the tissue pixels, one curve per run, as a PNG."""
    cohort = cohort_for_page(request, cohort_id)
    split, sweep_id = _params(request)
    runs = _runs(request, cohort.pk, sweep_id)
    evaluations = Evaluation.objects.filter(run__in=runs, split=split).select_related("run")
    curves = {
        f"alpha={e.run.alpha:g} beta={e.run.beta:g} (run {e.run_id})": Histogram.from_dict(
            e.details["histograms"]["tissue"]
        )
        for e in sorted(evaluations, key=lambda e: (e.run.alpha, e.run.beta, e.run_id))
        if "histograms" in e.details
    }
    if not curves:
        raise Http404("No evaluated run has curves yet.")
    with tempfile.TemporaryDirectory() as folder:
        path = plot_roc_pr(curves, Path(folder) / "curves.png", title=f"Tissue pixels, {split}")
        png = path.read_bytes()
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, no-cache"
    return response
