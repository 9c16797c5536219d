"""The paper's Table 1: pixelwise AUC of each (alpha, beta) configuration as a grid, with CSV,
JSON and a picture. Django-free: it takes one row per run and writes files."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.errors import InvalidInputError

ALPHAS = (0.2, 0.4, 0.6, 0.8, 1.0)
BETAS = (0.0, 0.2, 0.4, 0.6, 0.8)
# The four panels of the table: in-distribution / out-of-location, tissue / with background.
PANELS = (
    ("in_distribution", "auc_tissue", "In-distribution, tissue"),
    ("in_distribution", "auc_all", "In-distribution, with background"),
    ("out_of_location", "auc_tissue", "Out-of-location, tissue"),
    ("out_of_location", "auc_all", "Out-of-location, with background"),
)
CSV_COLUMNS = (
    "run", "alpha", "beta", "status", "auc_tissue", "auc_all", "in_auc_tissue", "in_auc_all",
    "out_auc_tissue", "out_auc_all", "threshold", "precision", "recall", "f1", "dice",
    "n_slides",
)  # fmt: skip


@dataclass(frozen=True)
class ReportRow:
    """One run's scores (None where not evaluated or undefined)."""

    run: int
    alpha: float
    beta: float
    status: str
    auc_tissue: float | None = None
    auc_all: float | None = None
    in_auc_tissue: float | None = None
    in_auc_all: float | None = None
    out_auc_tissue: float | None = None
    out_auc_all: float | None = None
    threshold: int | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    dice: float | None = None
    n_slides: int = 0

    def panel_value(self, subset: str, metric: str) -> float | None:
        prefix = "in_" if subset == "in_distribution" else "out_"
        value: float | None = getattr(self, prefix + metric)
        return value


def _key(value: float) -> int:
    """Grid coordinates compared in hundredths: 0.6 + 0.2 must find the 0.8 column."""
    return round(value * 100)


def grid(rows: Sequence[ReportRow], subset: str, metric: str) -> dict[tuple[int, int], float]:
    """{(alpha, beta) in hundredths: value} of one panel; the best run wins a repeated cell."""
    cells: dict[tuple[int, int], float] = {}
    for row in rows:
        value = row.panel_value(subset, metric)
        if value is None or not math.isfinite(value):
            continue
        key = (_key(row.alpha), _key(row.beta))
        cells[key] = max(value, cells.get(key, -math.inf))
    return cells


def to_csv(rows: Sequence[ReportRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r.alpha, r.beta, r.run)):
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    return out.getvalue()


def to_json(rows: Sequence[ReportRow]) -> dict[str, object]:
    return {
        "rows": [asdict(r) for r in sorted(rows, key=lambda r: (r.alpha, r.beta, r.run))],
        "grids": {
            f"{subset}.{metric}": [
                {"alpha": a / 100, "beta": b / 100, "value": v}
                for (a, b), v in sorted(grid(rows, subset, metric).items())
            ]
            for subset, metric, _ in PANELS
        },
    }


def plot_grid(rows: Sequence[ReportRow], path: str | Path, *, title: str = "") -> Path:
    """Four alpha x beta panels, cells coloured by AUC and labelled with it (blank: no run)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise InvalidInputError("nothing to plot: the report has no run")
    fig = Figure(figsize=(11.0, 9.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    image = None
    for ax, (subset, metric, label) in zip(axes.flat, PANELS, strict=True):
        cells = grid(rows, subset, metric)
        data = np.full((len(BETAS), len(ALPHAS)), np.nan)
        for (a, b), value in cells.items():
            if a in (ai := [_key(x) for x in ALPHAS]) and b in (bi := [_key(x) for x in BETAS]):
                data[bi.index(b), ai.index(a)] = value
        image = ax.imshow(data, cmap="RdYlGn", vmin=0.5, vmax=1.0, origin="lower")
        for (r, c), value in np.ndenumerate(data):
            if not np.isnan(value):
                ax.text(c, r, f"{value:.3f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(ALPHAS)), [f"{a:g}" for a in ALPHAS])
        ax.set_yticks(range(len(BETAS)), [f"{b:g}" for b in BETAS])
        ax.set(xlabel="alpha", ylabel="beta", title=label)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="pixelwise ROC AUC")
    if title:
        fig.suptitle(title)
    out = Path(path)
    fig.savefig(out, dpi=100)
    return out
