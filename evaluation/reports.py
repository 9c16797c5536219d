"""Sweep reports: the scores of a set of runs as the paper's Table 1, written as files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidInputError
from evaluation.metrics.auc import Histogram
from evaluation.metrics.curves import plot_roc_pr
from evaluation.metrics.report import ReportRow, plot_grid, to_csv, to_json
from evaluation.models import Evaluation
from training.models import TrainingRun


@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    json: Path
    grid_png: Path
    curves_png: Path | None


def report_rows(runs: Sequence[TrainingRun], split: str) -> list[ReportRow]:
    evaluations = {e.run_id: e for e in Evaluation.objects.filter(run__in=runs, split=split)}
    rows = []
    for run in runs:
        e = evaluations.get(run.pk)
        if e is None:
            rows.append(ReportRow(run=run.pk, alpha=run.alpha, beta=run.beta, status=run.status))
            continue
        inside = e.details.get("in_distribution", {})
        outside = e.details.get("out_of_location", {})
        rows.append(
            ReportRow(
                run=run.pk,
                alpha=run.alpha,
                beta=run.beta,
                status=run.status,
                auc_tissue=e.auc_tissue,
                auc_all=e.auc_all,
                in_auc_tissue=inside.get("auc_tissue"),
                in_auc_all=inside.get("auc_all"),
                out_auc_tissue=outside.get("auc_tissue"),
                out_auc_all=outside.get("auc_all"),
                threshold=e.threshold,
                precision=e.precision,
                recall=e.recall,
                f1=e.f1,
                dice=e.dice,
                n_slides=e.n_slides,
            )
        )
    return rows


def report_write(*, runs: Sequence[TrainingRun], split: str, outdir: Path) -> ReportFiles:
    """Write report.csv, report.json, grid.png (and curves.png when maps were scored)."""
    if not runs:
        raise InvalidInputError("A report needs at least one run.")
    rows = report_rows(runs, split)
    outdir.mkdir(parents=True, exist_ok=True)
    csv_path = outdir / "report.csv"
    csv_path.write_text(to_csv(rows))
    json_path = outdir / "report.json"
    json_path.write_text(json.dumps({"split": split, **to_json(rows)}, indent=2))
    grid_png = plot_grid(rows, outdir / "grid.png", title=f"Pixelwise AUC on {split}")
    curves = {
        f"alpha={e.run.alpha:g} beta={e.run.beta:g}": Histogram.from_dict(
            e.details["histograms"]["tissue"]
        )
        for e in Evaluation.objects.filter(run__in=runs, split=split).select_related("run")
        if "histograms" in e.details
    }
    curves_png = (
        plot_roc_pr(curves, outdir / "curves.png", title="Tissue pixels") if curves else None
    )
    return ReportFiles(csv_path, json_path, grid_png, curves_png)
