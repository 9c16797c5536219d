"""The only adapter between the ORM and the training engine (training.mil).

Services read slides and contours from the database, hand the engine paths, labels and
callbacks, and write what it reports (progress, history, checkpoints) back to the run's row.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.utils import timezone

from common.errors import EmptyTissueError, InvalidInputError, SlideUnreadableError, TumorMapError
from common.version import code_version
from slides.models import Cohort, Label, Slide, SlideState
from slides.services.annotations import annotation_set_for
from slides.services.tissue import load_tissue_mask, tissue_mask_path
from slides.wsi.rasterize import rasterize
from training.mil.checkpoint import LATEST_NAME, load_checkpoint, load_model
from training.mil.config import RunConfig
from training.mil.dataset import SlideEntry, TruthFn
from training.mil.device import resolve_device
from training.mil.export import save_map_npz, write_pyramidal_tiff
from training.mil.infer import infer_slide, open_reader_pool
from training.mil.loop import EpochInfo, RunCancelled, StepInfo, fit
from training.mil.maps import SlideMap
from training.models import HeatMap, RunStatus, TrainingRun
from training.services.runs import run_log

logger = logging.getLogger(__name__)

# Progress is written to the run's row at most this often: every step of a fast GPU run would
# be dozens of writes per second for nothing a person can see.
PROGRESS_WRITE_INTERVAL_S = 1.0
# Cells per patch side in the validation truth maps (pixel AUC while training).
TRUTH_CELLS_PER_PATCH = 8
LABEL_VALUES = {Label.TUMOR: 1, Label.NORMAL: 0}

ProgressCallback = Callable[[TrainingRun], None]


def run_workdir(run: TrainingRun) -> Path:
    """The run's folder of checkpoints and maps, chosen once and kept on the row.

    The name carries the creation time as well as the id: a database restored or recreated
    beside an old artifacts folder must never make a new run resume an old run's checkpoint.
    """
    if run.workdir:
        return Path(run.workdir)
    stamp = run.created_at.strftime("%Y%m%dT%H%M%S%f")
    workdir = Path(settings.ARTIFACTS_DIR) / "runs" / f"{run.pk}-{stamp}"
    run.workdir = str(workdir)
    TrainingRun.objects.filter(pk=run.pk).update(workdir=run.workdir)
    return workdir


def slide_entries(cohort: Cohort, split: str) -> list[SlideEntry]:
    """Ready slides of a split with a tumor / normal label, as the engine's SlideEntry."""
    slides = Slide.objects.filter(
        cohort=cohort, split=split, state=SlideState.READY, label__in=LABEL_VALUES
    ).order_by("pk")
    return [_slide_entry(s, cohort) for s in slides]


def _slide_entry(slide: Slide, cohort: Cohort) -> SlideEntry:
    mask_path = tissue_mask_path(slide)
    return SlideEntry(
        path=slide.file_path,
        label=LABEL_VALUES[Label(slide.label)],
        default_mpp=slide.mpp if slide.mpp_assumed else cohort.default_mpp,
        slide_id=str(slide.pk),
        # Computed at import: the loader workers read it instead of recomputing it per bag.
        tissue_mask_path=str(mask_path) if mask_path is not None else None,
        tissue_l0_per_px=slide.tissue_l0_per_px if mask_path is not None else None,
    )


def validation_truth_fn(cohort: Cohort) -> TruthFn | None:
    """Truth maps of validation patches from the pathologists' contours, for pixel AUC.

    Normal slides are all negative. When a tumor validation slide has no contour the pixel AUC
    cannot be computed honestly, and None is returned.
    """
    slides = Slide.objects.filter(
        cohort=cohort, split="val", state=SlideState.READY, label__in=LABEL_VALUES
    )
    geometries: dict[str, Any] = {}
    for slide in slides:
        if slide.label == Label.TUMOR:
            annset = annotation_set_for(slide)
            if annset.tumor_geometry.is_empty:
                return None
            geometries[str(slide.pk)] = annset.tumor_geometry
    if not geometries:
        return None

    def truth(entry: SlideEntry, l0_xy: np.ndarray, l0_patch_size: float) -> np.ndarray:
        cells = TRUTH_CELLS_PER_PATCH
        out = np.zeros((len(l0_xy), cells, cells), dtype=np.float32)
        geometry = geometries.get(entry.slide_id or "")
        if geometry is None:
            return out  # a normal slide
        for i, (x, y) in enumerate(l0_xy):
            out[i] = rasterize(
                geometry,
                l0_origin=(float(x), float(y)),
                l0_cell_size=l0_patch_size / cells,
                shape=(cells, cells),
            )
        return out

    return truth


class _RunReporter:
    """Writes the engine's step and epoch reports onto the run's row."""

    def __init__(self, run: TrainingRun, on_progress: ProgressCallback | None) -> None:
        self.run = run
        self.on_progress = on_progress
        self.last_write = 0.0
        self.started = time.monotonic()
        self.epochs = int(run.config.get("epochs", 1))

    def step(self, info: StepInfo) -> None:
        done_steps = info.epoch * info.steps + info.step + 1
        total_steps = self.epochs * info.steps
        elapsed = time.monotonic() - self.started
        fraction = done_steps / total_steps if total_steps else 0.0
        eta = elapsed / fraction * (1 - fraction) if fraction > 0 else None
        self.run.progress = {
            "epoch": info.epoch + 1,
            "epochs": self.epochs,
            "step": info.step + 1,
            "steps": info.steps,
            "loss": info.loss if math.isfinite(info.loss) else None,
            "patches_per_s": round(info.patches_per_s, 1),
            "eta_s": round(eta, 1) if eta is not None else None,
            "fraction": round(fraction, 4),
        }
        now = time.monotonic()
        if now - self.last_write >= PROGRESS_WRITE_INTERVAL_S or done_steps == total_steps:
            self.last_write = now
            TrainingRun.objects.filter(pk=self.run.pk).update(
                progress=self.run.progress, heartbeat_at=timezone.now()
            )
        if self.on_progress:
            self.on_progress(self.run)

    def epoch(self, info: EpochInfo) -> None:
        entry = {**_finite(info.metrics), "epoch": info.epoch + 1}
        # A resumed run repeats the epoch it was in when it stopped: keep one entry per epoch.
        earlier = [h for h in self.run.history if h.get("epoch", 0) < entry["epoch"]]
        self.run.history = [*earlier, entry]
        self.run.heartbeat_at = timezone.now()
        self.run.epochs_completed = info.epoch + 1
        self.run.best_epoch = None if info.best_epoch is None else info.best_epoch + 1
        self.run.best_metric = _finite_or_none(info.best_metric)
        if info.checkpoint is not None:
            self.run.checkpoint_path = str(info.checkpoint)
        self.run.save(
            update_fields=[
                "history", "epochs_completed", "best_epoch", "best_metric", "checkpoint_path",
                "progress", "heartbeat_at",
            ]
        )  # fmt: skip
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float))
        run_log(self.run, f"epoch {entry['epoch']}/{self.epochs}: {metrics}")

    def should_stop(self) -> bool:
        return bool(
            TrainingRun.objects.filter(pk=self.run.pk)
            .values_list("cancel_requested", flat=True)
            .first()
        )


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN (e.g. an AUC with one class) is not JSON: store it as null."""
    return {k: _finite_or_none(float(v)) for k, v in metrics.items()}


def _finish(run: TrainingRun, status: str, error: str = "") -> TrainingRun:
    run.status = status
    run.error = error
    run.finished_at = timezone.now()
    run.save()
    return run


def run_execute(
    *,
    run: TrainingRun,
    device: str = "auto",
    on_progress: ProgressCallback | None = None,
) -> TrainingRun:
    """Train the run to the end (resuming from its last checkpoint if it has one).

    The run ends ``succeeded``, ``cancelled`` (its cancel flag was raised) or ``failed`` with
    the reason; the engine's own errors are recorded, never lost.
    """
    config = RunConfig.from_dict(run.config)
    cohort = run.cohort
    train_entries = slide_entries(cohort, "train")
    val_entries = slide_entries(cohort, "val")
    workdir = run_workdir(run)
    workdir.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    latest = workdir / LATEST_NAME
    if latest.is_file():
        run_log(run, f"resuming from checkpoint {latest} (epoch {load_checkpoint(latest).epoch})")
    run.status = RunStatus.RUNNING
    run.heartbeat_at = timezone.now()
    run.started_at = run.started_at or timezone.now()
    run.device = str(torch_device)
    run.workdir = str(workdir)
    run.code_version = code_version()
    run.error = ""
    run.save()
    reporter = _RunReporter(run, on_progress)
    try:
        result = fit(
            config,
            train_entries,
            val_entries,
            workdir=workdir,
            device=torch_device,
            on_step=reporter.step,
            on_epoch=reporter.epoch,
            should_stop=reporter.should_stop,
            resume=True,
            truth_fn=validation_truth_fn(cohort),
        )
    except RunCancelled:
        return _finish(run, RunStatus.CANCELLED, "Cancelled on request.")
    except TumorMapError as exc:
        logger.warning("run %s failed: %s", run.pk, exc.message)
        return _finish(run, RunStatus.FAILED, exc.message)
    except Exception as exc:  # recorded on the row, then re-raised for the worker's log
        logger.exception("run %s crashed", run.pk)
        _finish(run, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    run.metric_name = result.metric_name
    run.best_epoch = None if result.best_epoch is None else result.best_epoch + 1
    run.best_metric = _finite_or_none(result.best_metric)
    run.epochs_completed = result.epochs_completed
    run.checkpoint_path = str(result.latest_checkpoint)
    run.best_checkpoint_path = str(result.best_checkpoint or result.latest_checkpoint)
    run.normalisation = result.normalisation.to_dict()
    return _finish(run, RunStatus.SUCCEEDED)


def _checkpoint_for(run: TrainingRun) -> Path:
    path = run.best_checkpoint_path or run.checkpoint_path
    if run.status != RunStatus.SUCCEEDED or not path or not Path(path).is_file():
        raise InvalidInputError(
            f"Run {run.pk} has no trained model to infer with (status {run.status}).",
            details={"run": run.pk, "status": run.status},
        )
    return Path(path)


def run_model(run: TrainingRun, *, device: str = "auto") -> tuple[Any, RunConfig, Any, Any]:
    """The run's best model in eval mode on ``device``, with its config and normalisation."""
    torch_device = resolve_device(device)
    model, config, normalisation = load_model(_checkpoint_for(run), device=torch_device)
    return model, config, normalisation, torch_device


def heatmap_slides(
    run: TrainingRun, *, split: str | None, slide_ids: list[int] | None
) -> list[Slide]:
    """The ready slides of the run's cohort to map: a split ("all" for every one) or ids."""
    slides = Slide.objects.filter(cohort=run.cohort, state=SlideState.READY).order_by("pk")
    if slide_ids:
        found = list(slides.filter(pk__in=slide_ids))
        missing = sorted(set(slide_ids) - {s.pk for s in found})
        if missing:
            raise InvalidInputError(
                f"Slides {missing} are not ready slides of cohort {run.cohort.name}.",
                details={"missing": missing},
            )
        return found
    if split and split != "all":
        slides = slides.filter(split=split)
    return list(slides)


def _slide_progress(
    callback: Callable[[int, int, Slide], None], slide: Slide, done: int, total: int
) -> None:
    callback(done, total, slide)


@dataclass
class _MapInProgress:
    """A slide's map whose files are being written (off the main thread)."""

    slide: Slide
    slide_map: SlideMap
    provenance: dict[str, Any]
    files: Future[tuple[Path, Path]]


def _write_map_files(
    folder: Path, slide: Slide, slide_map: SlideMap, provenance: dict[str, Any]
) -> tuple[Path, Path]:
    """The map's compressed array and pyramidal TIFF overlay, each written atomically.

    Touches no database: it runs on a writer thread while the next slide is inferred.
    """
    map_path = folder / f"{slide.pk}.npz"
    tiff_path = folder / f"{slide.pk}.tiff"
    save_map_npz(slide_map, map_path, provenance=provenance)
    write_pyramidal_tiff(slide_map, tiff_path, slide_l0_size=(slide.width or 0, slide.height or 0))
    return map_path, tiff_path


def _record_map(run: TrainingRun, done: _MapInProgress) -> HeatMap:
    """Wait for the map's files, then create or update its HeatMap row."""
    map_path, tiff_path = done.files.result()
    root = Path(settings.ARTIFACTS_DIR)
    slide_map = done.slide_map
    heatmap, _ = HeatMap.objects.update_or_create(
        run=run,
        slide=done.slide,
        defaults={
            "epoch": done.provenance["epoch"],
            "map_path": str(map_path.relative_to(root)),
            "tiff_path": str(tiff_path.relative_to(root)),
            "rows": slide_map.probs.shape[0],
            "cols": slide_map.probs.shape[1],
            "l0_origin_x": slide_map.l0_origin[0],
            "l0_origin_y": slide_map.l0_origin[1],
            "l0_cell_size": slide_map.l0_cell_size,
            "tissue_cells": int(slide_map.valid.sum()),
            "provenance": done.provenance,
        },
    )
    logger.info("run %s: mapped slide %s", run.pk, done.slide.pk)
    return heatmap


def heatmap_infer(
    *,
    run: TrainingRun,
    slides: list[Slide],
    device: str = "auto",
    reader_processes: int | None = None,
    on_progress: Callable[[int, int, Slide], None] | None = None,
) -> list[HeatMap]:
    """Infer the run's best model over every tissue patch of each slide and store the maps.

    Patches are read by ``reader_processes`` processes (default: the
    ``TUMORMAP_INFER_READER_PROCESSES`` setting; 0 reads with threads), started once for all
    the slides.

    Each map is saved as a compressed array with its geometry and provenance, and exported as a
    pyramidal TIFF that QuPath and ASAP overlay on the slide, while the next slide is inferred;
    its HeatMap row follows once both files are written. A slide that cannot be read is skipped
    with its reason recorded on the slide; the others are mapped. When a later slide fails, the
    maps inferred before it are still stored.
    """
    processes = (
        settings.TUMORMAP_INFER_READER_PROCESSES if reader_processes is None else reader_processes
    )
    checkpoint_path = _checkpoint_for(run)
    model, config, normalisation, torch_device = run_model(run, device=device)
    epoch = load_checkpoint(checkpoint_path).epoch  # epochs completed when it was saved
    folder = run_workdir(run) / "maps"
    results: list[HeatMap] = []
    previous: _MapInProgress | None = None

    def record_previous() -> None:
        nonlocal previous
        if previous is not None:
            done, previous = previous, None
            results.append(_record_map(run, done))

    with (
        open_reader_pool(processes, torch_device) as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="tumormap-map-files") as writer,
    ):
        try:
            for slide in slides:
                try:
                    slide_map = infer_slide(
                        model,
                        slide.file_path,
                        config=config,
                        normalisation=normalisation,
                        device=torch_device,
                        default_mpp=slide.mpp if slide.mpp_assumed else run.cohort.default_mpp,
                        tissue=load_tissue_mask(slide),
                        reader_pool=pool,
                        on_progress=functools.partial(_slide_progress, on_progress, slide)
                        if on_progress
                        else None,
                    )
                except (SlideUnreadableError, EmptyTissueError) as exc:
                    logger.warning("run %s: slide %s not mapped: %s", run.pk, slide.pk, exc.message)
                    continue
                record_previous()
                provenance = {
                    "run": run.pk,
                    "epoch": epoch,
                    "checkpoint": str(checkpoint_path),
                    "config": config.to_dict(),
                    "code_version": code_version(),
                    "slide": slide.original_filename,
                }
                files = writer.submit(_write_map_files, folder, slide, slide_map, provenance)
                previous = _MapInProgress(slide, slide_map, provenance, files)
            record_previous()
        except BaseException:
            # The map inferred before the failure is kept, as it would have been had its files
            # been written before the next slide started.
            try:
                record_previous()
            except Exception:
                logger.exception("run %s: the last map inferred was not stored", run.pk)
            raise
    return results
