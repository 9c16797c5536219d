"""Evaluations of tumor maps against pathologists' contours."""

from __future__ import annotations

from django.db import models

from training.models import TrainingRun


class Evaluation(models.Model):
    """Pixelwise scores of one run's maps on one split (the paper's Table 1 cells)."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="evaluations")
    split = models.CharField(max_length=12)
    auc_tissue = models.FloatField(null=True, blank=True)
    auc_all = models.FloatField(null=True, blank=True)
    threshold = models.PositiveSmallIntegerField(null=True, blank=True)
    threshold_source = models.CharField(max_length=40, blank=True)
    precision = models.FloatField(null=True, blank=True)
    recall = models.FloatField(null=True, blank=True)
    f1 = models.FloatField(null=True, blank=True)
    dice = models.FloatField(null=True, blank=True)
    iou = models.FloatField(null=True, blank=True)
    n_slides = models.PositiveIntegerField(default=0)
    n_pixels = models.BigIntegerField(default=0)
    # {"in_distribution": {...}, "out_of_location": {...}, "per_location": {...},
    #  "per_slide": [...], "missing_contours": [...], "histograms": {...}}
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["run", "split"], name="unique_evaluation_per_split")
        ]

    def __str__(self) -> str:
        return f"evaluation of run {self.run_id} on {self.split}"
