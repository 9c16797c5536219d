from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from PIL import Image

from common.errors import InvalidInputError
from evaluation.metrics.report import ReportRow, grid, plot_grid, to_csv, to_json


def rows() -> list[ReportRow]:
    return [
        ReportRow(run=1, alpha=0.2, beta=0.2, status="succeeded", auc_tissue=0.8,
                  in_auc_tissue=0.8, in_auc_all=0.95, out_auc_tissue=0.7),
        ReportRow(run=2, alpha=0.6, beta=0.2 + 0.2, status="succeeded", in_auc_tissue=0.65),
        ReportRow(run=3, alpha=0.2, beta=0.2, status="succeeded", in_auc_tissue=0.85),
        ReportRow(run=4, alpha=1.0, beta=0.0, status="failed"),
    ]  # fmt: skip


def test_grid_keys_survive_float_sums_and_keep_the_best_repeat() -> None:
    cells = grid(rows(), "in_distribution", "auc_tissue")
    assert cells == {(20, 20): 0.85, (60, 40): 0.65}
    assert grid(rows(), "out_of_location", "auc_tissue") == {(20, 20): 0.7}


def test_csv_and_json() -> None:
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows()))))
    assert [r["run"] for r in parsed] == ["1", "3", "2", "4"]
    assert parsed[-1]["status"] == "failed" and parsed[-1]["auc_tissue"] == ""
    data = to_json(rows())
    assert data["grids"]["in_distribution.auc_all"] == [{"alpha": 0.2, "beta": 0.2, "value": 0.95}]


def test_plot(tmp_path: Path) -> None:
    path = plot_grid(rows(), tmp_path / "grid.png", title="test")
    assert Image.open(path).size[0] > 500
    with pytest.raises(InvalidInputError):
        plot_grid([], tmp_path / "none.png")
