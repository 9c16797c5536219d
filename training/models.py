"""Training runs of the (alpha, beta) MIL scheme and their configurations."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from slides.models import Cohort


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class Configuration(models.Model):
    """A named, reusable set of training settings (a RunConfig as JSON)."""

    name = models.CharField(max_length=200)
    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="configurations")
    config = models.JSONField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cohort", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cohort", "name"], name="unique_configuration_name")
        ]

    def __str__(self) -> str:
        return self.name


class Sweep(models.Model):
    """A set of (alpha, beta) configurations trained with the same shared settings."""

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="sweeps")
    name = models.CharField(max_length=200, blank=True)
    # [[alpha, beta], ...]
    grid = models.JSONField()
    # RunConfig fields shared by every run of the sweep (epochs, patches per slide, ...).
    shared_settings = models.JSONField(default=dict, blank=True)
    # Infer and evaluate the test split after each run trains.
    evaluate = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name or f"sweep {self.pk}"


class TrainingRun(models.Model):
    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="runs")
    sweep = models.ForeignKey(
        Sweep, on_delete=models.CASCADE, null=True, blank=True, related_name="runs"
    )
    queue = models.CharField(max_length=20, default="gpu")
    task_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="Host of the last worker.")
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # The broker's life (Redis run_id) when the run was queued: a restarted broker without
    # persistence forgot the message, and the watchdog sends it again.
    broker_epoch = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    log_tail = models.TextField(blank=True)
    configuration = models.ForeignKey(
        Configuration, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs"
    )
    # The frozen RunConfig of this run (also saved inside every checkpoint).
    config = models.JSONField()
    alpha = models.FloatField()
    beta = models.FloatField()
    status = models.CharField(max_length=12, choices=RunStatus.choices, default=RunStatus.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    device = models.CharField(max_length=64, blank=True)
    # {"epoch", "epochs", "step", "steps", "loss", "patches_per_s", "eta_s", "fraction"}
    progress = models.JSONField(default=dict, blank=True)
    # One entry per finished epoch: {"epoch", "train_loss", "val_loss", "val_slide_auc", ...}
    history = models.JSONField(default=list, blank=True)
    metric_name = models.CharField(max_length=64, blank=True)
    best_metric = models.FloatField(null=True, blank=True)
    best_epoch = models.IntegerField(null=True, blank=True)
    epochs_completed = models.PositiveIntegerField(default=0)
    workdir = models.CharField(max_length=1024, blank=True)
    checkpoint_path = models.CharField(max_length=1024, blank=True)
    best_checkpoint_path = models.CharField(max_length=1024, blank=True)
    normalisation = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    code_version = models.CharField(max_length=100, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["cohort", "status"])]

    def __str__(self) -> str:
        return f"run {self.pk} (alpha={self.alpha:g}, beta={self.beta:g}) {self.status}"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class HeatMap(models.Model):
    """A tumor probability map of one slide inferred by one run (uint8, p x 255)."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="heatmaps")
    slide = models.ForeignKey("slides.Slide", on_delete=models.CASCADE, related_name="heatmaps")
    epoch = models.PositiveIntegerField(null=True, blank=True)
    # Paths relative to ARTIFACTS_DIR.
    map_path = models.CharField(max_length=512)
    tiff_path = models.CharField(max_length=512, blank=True)
    # Geometry: cell (row, col) covers level-0 [origin + (col, row) * cell_size, + cell_size).
    rows = models.PositiveIntegerField()
    cols = models.PositiveIntegerField()
    l0_origin_x = models.FloatField(default=0.0)
    l0_origin_y = models.FloatField(default=0.0)
    l0_cell_size = models.FloatField()
    tissue_cells = models.PositiveIntegerField(default=0)
    provenance = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "slide"]
        constraints = [
            models.UniqueConstraint(fields=["run", "slide"], name="unique_heatmap_per_run_slide")
        ]

    def __str__(self) -> str:
        return f"map of {self.slide} by run {self.run_id}"
