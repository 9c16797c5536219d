"""Cohorts of whole-slide images, their cases, slides and members."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    ANNOTATOR = "annotator", "Annotator"
    MANAGER = "manager", "Manager"


class Cohort(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_cohorts"
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="cohorts", blank=True
    )
    default_location = models.CharField(
        max_length=100, blank=True, help_text="Organ of slides that do not say otherwise."
    )
    default_mpp = models.FloatField(
        null=True,
        blank=True,
        help_text="Microns per pixel assumed for slides without resolution metadata.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cohort", "user"], name="unique_cohort_member")
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) in {self.cohort}"


class Case(models.Model):
    """A patient (TCGA: the first three barcode fields, e.g. TCGA-BH-A0B7)."""

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="cases")
    submitter_id = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["submitter_id"]
        constraints = [
            models.UniqueConstraint(fields=["cohort", "submitter_id"], name="unique_case_in_cohort")
        ]

    def __str__(self) -> str:
        return self.submitter_id


class SlideState(models.TextChoices):
    AWAITING_FILE = "awaiting_file", "Awaiting file"
    READY = "ready", "Ready"
    UNREADABLE = "unreadable", "Unreadable"


class Label(models.TextChoices):
    TUMOR = "tumor", "Tumor"
    NORMAL = "normal", "Normal"
    UNKNOWN = "unknown", "Unknown"


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    VAL = "val", "Validation"
    TEST = "test", "Test"
    UNASSIGNED = "unassigned", "Unassigned"


class LabelSource(models.TextChoices):
    NONE = "", "None"
    BARCODE = "barcode", "TCGA barcode"
    CSV = "csv", "Label file"
    SAMPLE_SHEET = "sample_sheet", "GDC sample sheet"
    MANUAL = "manual", "Set by hand"


class Slide(models.Model):
    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="slides")
    case = models.ForeignKey(
        Case, on_delete=models.SET_NULL, null=True, blank=True, related_name="slides"
    )
    # Absolute path of the slide file: uploads live under SLIDES_DIR, imported cohorts (often
    # terabytes) stay where they are.
    file_path = models.CharField(max_length=1024, blank=True)
    original_filename = models.CharField(max_length=512)
    gdc_file_id = models.CharField(max_length=64, blank=True)
    md5 = models.CharField(max_length=32, blank=True)
    expected_md5 = models.CharField(
        max_length=32, blank=True, help_text="Checksum announced by a manifest."
    )
    size = models.BigIntegerField(null=True, blank=True)
    state = models.CharField(
        max_length=20, choices=SlideState.choices, default=SlideState.AWAITING_FILE
    )
    error_message = models.TextField(blank=True)
    warnings = models.JSONField(default=list, blank=True)

    vendor = models.CharField(max_length=64, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True, help_text="Level-0 width (px).")
    height = models.PositiveIntegerField(null=True, blank=True, help_text="Level-0 height (px).")
    level_count = models.PositiveSmallIntegerField(null=True, blank=True)
    level_dimensions = models.JSONField(default=list, blank=True)
    level_downsamples = models.JSONField(default=list, blank=True)
    mpp = models.FloatField(null=True, blank=True, help_text="Microns per level-0 pixel.")
    mpp_assumed = models.BooleanField(default=False)
    objective_power = models.FloatField(null=True, blank=True)
    associated_images = models.JSONField(default=list, blank=True)

    label = models.CharField(max_length=10, choices=Label.choices, default=Label.UNKNOWN)
    label_source = models.CharField(
        max_length=20, choices=LabelSource.choices, default=LabelSource.NONE, blank=True
    )
    sample_type_code = models.CharField(max_length=2, blank=True)
    sample_type_name = models.CharField(max_length=100, blank=True)
    slide_type = models.CharField(max_length=2, blank=True, help_text="TS/BS/MS frozen, DX FFPE")
    location = models.CharField(max_length=100, blank=True)
    split = models.CharField(max_length=12, choices=Split.choices, default=Split.UNASSIGNED)
    split_locked = models.BooleanField(
        default=False, help_text="Split given by a label file: kept when the cohort is re-split."
    )

    # Paths relative to ARTIFACTS_DIR.
    thumbnail = models.CharField(max_length=512, blank=True)
    tissue_mask = models.CharField(max_length=512, blank=True)
    tissue_fraction = models.FloatField(null=True, blank=True)
    tissue_l0_per_px = models.FloatField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["original_filename"]
        constraints = [
            models.UniqueConstraint(
                fields=["cohort", "original_filename"], name="unique_slide_name_in_cohort"
            )
        ]
        indexes = [
            models.Index(fields=["cohort", "split"]),
            models.Index(fields=["cohort", "label"]),
            models.Index(fields=["cohort", "state"]),
        ]

    def __str__(self) -> str:
        return self.original_filename


class ContourLabel(models.TextChoices):
    TUMOR = "tumor", "Tumor"
    EXCLUSION = "exclusion", "Exclusion (hole in tumor)"
    NORMAL = "normal", "Normal"


class Annotation(models.Model):
    """One pathologist's contour on a slide, in level-0 pixel coordinates."""

    slide = models.ForeignKey(Slide, on_delete=models.CASCADE, related_name="annotations")
    label = models.CharField(
        max_length=12, choices=ContourLabel.choices, default=ContourLabel.TUMOR
    )
    name = models.CharField(max_length=200, blank=True)
    author = models.CharField(max_length=150, blank=True)
    source_format = models.CharField(max_length=20, blank=True)
    source_file = models.CharField(max_length=512, blank=True)
    # A GeoJSON Polygon or MultiPolygon: coordinates kept as given (floats), so an export
    # reproduces the import exactly.
    geometry = models.JSONField()
    n_vertices = models.PositiveIntegerField(default=0)
    l0_area = models.FloatField(default=0.0, help_text="Area in level-0 square pixels.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slide", "pk"]
        indexes = [models.Index(fields=["slide", "label"])]

    def __str__(self) -> str:
        return f"{self.label} contour on {self.slide}"


class UploadState(models.TextChoices):
    RECEIVING = "receiving", "Receiving"
    COMPLETE = "complete", "Complete"
    FAILED = "failed", "Failed"
    ABORTED = "aborted", "Aborted"


class Upload(models.Model):
    """A resumable upload of one slide file, received in Content-Range chunks.

    ``offset`` is the number of bytes stored so far: the client resumes from it after an
    interruption. The bytes live in a temporary file under TUMORMAP_UPLOAD_DIR until the
    upload completes and the file is checked, moved into SLIDES_DIR and registered as ``slide``.
    """

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="uploads")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    filename = models.CharField(max_length=255, help_text="Sanitised file name.")
    size = models.BigIntegerField(help_text="Announced size in bytes.")
    offset = models.BigIntegerField(default=0, help_text="Bytes received so far.")
    md5 = models.CharField(max_length=32, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    state = models.CharField(
        max_length=12, choices=UploadState.choices, default=UploadState.RECEIVING
    )
    error = models.TextField(blank=True)
    slide = models.ForeignKey(
        Slide, on_delete=models.SET_NULL, null=True, blank=True, related_name="uploads"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["cohort", "state"])]

    def __str__(self) -> str:
        return f"upload {self.pk} of {self.filename} ({self.offset}/{self.size} bytes)"
