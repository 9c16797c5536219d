"""The one exception hierarchy of TumorMap.

Every error a user can cause or meet carries a machine-readable ``code``, an HTTP status and
optional ``details``. The Django-free engines (``slides.wsi``, ``training.mil``,
``evaluation.metrics``) raise these; the web layer maps them to ``{"code", "message",
"details"}`` responses in one place. Foreign errors (OpenSlide, PIL, torch) are wrapped at the
boundary where they are caught, never leaked.
"""

from __future__ import annotations

from typing import Any


class TumorMapError(Exception):
    """Base class: ``code`` is stable and machine-readable, ``message`` is for people."""

    code: str = "error"
    http_status: int = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidInputError(TumorMapError):
    """The caller gave something malformed: a bad parameter, file or value."""

    code = "invalid_input"
    http_status = 400


class NotFoundError(TumorMapError):
    code = "not_found"
    http_status = 404


class PermissionDeniedError(TumorMapError):
    code = "permission_denied"
    http_status = 403


class ConflictError(TumorMapError):
    """The request is valid but clashes with stored state (e.g. a duplicate name)."""

    code = "conflict"
    http_status = 409


class PayloadTooLargeError(InvalidInputError):
    code = "payload_too_large"
    http_status = 413


class SlideError(TumorMapError):
    code = "slide_error"
    http_status = 422


class SlideUnreadableError(SlideError):
    """The file is not a slide OpenSlide can read (corrupt, truncated, not a slide at all)."""

    code = "slide_unreadable"


class EmptyTissueError(SlideError):
    """The slide has no tissue to sample patches from."""

    code = "empty_tissue"


class BarcodeError(InvalidInputError):
    """A string looks like a TCGA barcode but is malformed."""

    code = "invalid_barcode"


class AnnotationError(InvalidInputError):
    """A contour file is malformed or its geometry cannot be repaired."""

    code = "invalid_annotation"


class LabelFileError(InvalidInputError):
    """A label CSV, GDC manifest or sample sheet is malformed."""

    code = "invalid_label_file"


class ConfigurationError(InvalidInputError):
    """A training or evaluation configuration is invalid."""

    code = "invalid_configuration"


class ModelWeightsUnavailableError(TumorMapError):
    """Pretrained weights are needed but absent, and this machine cannot download them."""

    code = "weights_unavailable"
    http_status = 503


class ServiceUnavailableError(TumorMapError):
    code = "service_unavailable"
    http_status = 503
