"""Input and output shapes of the slides API (validation of form only; rules live in services)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from slides.models import Case, Cohort, Label, Role, Slide, Split, Upload
from slides.permissions import OWNER

# The database's bigint: sizes and offsets of multi-GB files.
MAX_BIGINT = 2**63 - 1


class ErrorSerializer(serializers.Serializer):
    """Every error response: a stable machine-readable code, a message, details."""

    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField(child=serializers.JSONField())


# -- cohorts and members -----------------------------------------------------------------------


class CohortSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    role = serializers.CharField(read_only=True, help_text="owner, manager, annotator or viewer")
    slide_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Cohort
        fields = [
            "id", "name", "description", "owner", "role", "slide_count", "default_location",
            "default_mpp", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields


class CohortCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    default_location = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=100
    )
    default_mpp = serializers.FloatField(required=False, allow_null=True, default=None)


class CohortUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, max_length=200)
    description = serializers.CharField(required=False, allow_blank=True)
    default_location = serializers.CharField(required=False, allow_blank=True, max_length=100)
    default_mpp = serializers.FloatField(required=False, allow_null=True)


class MemberSerializer(serializers.Serializer):
    user = serializers.IntegerField()
    username = serializers.CharField()
    role = serializers.CharField(help_text=f"{OWNER}, {', '.join(reversed(Role.values))}")
    since = serializers.DateTimeField()


class MemberAddSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.VIEWER)


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


# -- cases and slides --------------------------------------------------------------------------


class CaseSerializer(serializers.ModelSerializer):
    slide_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Case
        fields = ["id", "cohort", "submitter_id", "slide_count", "created_at"]
        read_only_fields = fields


class SlideSerializer(serializers.ModelSerializer):
    case = serializers.CharField(source="case.submitter_id", read_only=True, allow_null=True)
    case_id = serializers.IntegerField(read_only=True, allow_null=True)
    dzi_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Slide
        fields = [
            "id", "cohort", "case", "case_id", "original_filename", "state", "error_message",
            "warnings", "size", "md5", "gdc_file_id", "vendor", "width", "height",
            "level_count", "level_dimensions", "level_downsamples", "mpp", "mpp_assumed",
            "objective_power", "associated_images", "label", "label_source",
            "sample_type_code", "sample_type_name", "slide_type", "location", "split",
            "split_locked", "tissue_fraction", "dzi_url", "thumbnail_url", "created_at",
            "updated_at",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_dzi_url(self, slide: Slide) -> str:
        return reverse("api-slide-dzi", kwargs={"slide_id": slide.pk})

    @extend_schema_field(OpenApiTypes.STR)
    def get_thumbnail_url(self, slide: Slide) -> str:
        return reverse("api-slide-thumbnail", kwargs={"slide_id": slide.pk})


class SlideUpdateSerializer(serializers.Serializer):
    # DRF's metaclass moves declared fields out of the class: "label" and "errors" do not
    # shadow Field.label or Serializer.errors at run time, whatever the stubs say.
    label = serializers.ChoiceField(choices=Label.choices, required=False)  # type: ignore[assignment]
    split = serializers.ChoiceField(choices=Split.choices, required=False)
    location = serializers.CharField(required=False, allow_blank=True, max_length=100)


class AnnotationsCreatedSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.IntegerField())
    contours = serializers.IntegerField()
    vertices = serializers.IntegerField()
    warnings = serializers.ListField(child=serializers.CharField())


# -- uploads -----------------------------------------------------------------------------------


class UploadCreateSerializer(serializers.Serializer):
    filename = serializers.CharField(max_length=1024)
    size = serializers.IntegerField(min_value=0, max_value=MAX_BIGINT)
    md5 = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    sha256 = serializers.CharField(required=False, allow_blank=True, default="", max_length=128)


class UploadSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = Upload
        fields = [
            "id", "cohort", "filename", "size", "offset", "md5", "sha256", "state", "error",
            "slide", "url", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_url(self, upload: Upload) -> str:
        return reverse("api-upload-detail", kwargs={"upload_id": upload.pk})


class LabelFileSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A label CSV, a GDC manifest or a GDC sample sheet.")


class ImportReportSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["labels", "manifest", "sample_sheet"])
    cohort = serializers.CharField()
    slides = serializers.IntegerField()
    cases = serializers.IntegerField()
    registered = serializers.IntegerField()
    inspected = serializers.IntegerField()
    labels = serializers.DictField(child=serializers.IntegerField())
    splits = serializers.DictField(child=serializers.IntegerField())
    states = serializers.DictField(child=serializers.IntegerField())
    errors = serializers.ListField(  # type: ignore[assignment]
        child=serializers.DictField(child=serializers.CharField())
    )
    warnings = serializers.ListField(child=serializers.DictField(child=serializers.CharField()))


# -- accounts ----------------------------------------------------------------------------------


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, style={"input_type": "password"})


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


def as_dict(serializer: serializers.Serializer) -> dict[str, Any]:
    """A validated serializer's data as a plain dict (for keyword arguments of services)."""
    return dict(serializer.validated_data)
