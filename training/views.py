"""Pages of the training app: queueing a sweep of (alpha, beta) configurations with live
progress, and one run in detail. Live figures come from the API (static/js/training.js)."""

from __future__ import annotations

import dataclasses
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from common.errors import InvalidInputError
from slides.models import Cohort
from slides.permissions import MANAGER, cohort_role, has_role
from slides.views import cohort_for_page, page_errors
from training import selectors
from training.mil.config import ARCHS, PRETRAINED_CHOICES, RunConfig, paper_grid
from training.models import HeatMap
from training.services.runs import check_trainable

# The settings the training form offers, in this order; the others keep RunConfig's defaults.
FORM_SETTINGS = ("epochs", "patches_per_slide", "arch", "patch_size", "target_mpp", "pretrained")
ADVANCED_SETTINGS = ("lr", "seed", "num_workers", "normalisation_patches")


def _defaults() -> dict[str, Any]:
    return {
        f.name: f.default
        for f in dataclasses.fields(RunConfig)
        if f.default is not dataclasses.MISSING
    }


def _grid() -> dict[str, Any]:
    """The paper's alpha x beta grid as table rows (beta) and columns (alpha); cells outside
    alpha + beta <= 1 are absent."""
    pairs = paper_grid()
    alphas = sorted({a for a, _ in pairs})
    betas = sorted({b for _, b in pairs})
    valid = {(round(a, 6), round(b, 6)) for a, b in pairs}
    rows = [
        {
            "beta": b,
            "cells": [
                {"alpha": a, "beta": b, "valid": (round(a, 6), round(b, 6)) in valid}
                for a in alphas
            ],
        }
        for b in betas
    ]
    return {"alphas": alphas, "rows": rows, "count": len(pairs)}


@login_required
@require_GET
def cohort_training_page(request: HttpRequest, cohort_id: int) -> HttpResponse:
    cohort = cohort_for_page(request, cohort_id)
    can_manage = has_role(getattr(cohort, "role", None), MANAGER)
    not_trainable = ""
    try:
        check_trainable(cohort)
    except InvalidInputError as exc:
        not_trainable = exc.message
    defaults = _defaults()
    return render(
        request,
        "training/cohort_training.html",
        {
            "cohort": cohort,
            "can_manage": can_manage,
            "not_trainable": not_trainable,
            "grid": _grid(),
            "defaults": defaults,
            "archs": ARCHS,
            "pretrained_choices": PRETRAINED_CHOICES,
            "page_config": {
                "cohort": cohort.pk,
                "canManage": can_manage,
                "settings": list(FORM_SETTINGS + ADVANCED_SETTINGS),
            },
        },
    )


@login_required
@require_GET
def run_detail_page(request: HttpRequest, run_id: int) -> HttpResponse:
    with page_errors():
        run = selectors.run_get(user=request.user, run_id=run_id)
    cohort = Cohort.objects.get(pk=run.cohort_id)
    heatmaps = (
        HeatMap.objects.filter(run=run)
        .select_related("slide")
        .order_by("slide__split", "slide__original_filename")
    )
    can_manage = has_role(cohort_role(request.user, cohort), MANAGER)
    return render(
        request,
        "training/run_detail.html",
        {
            "run": run,
            "cohort": cohort,
            "heatmaps": heatmaps,
            "config_items": sorted(run.config.items()),
            "page_config": {"cohort": cohort.pk, "run": run.pk, "canManage": can_manage},
        },
    )
