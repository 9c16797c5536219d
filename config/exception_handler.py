"""The single mapping from exceptions to API responses: ``{"code", "message", "details"}``.

Every error an API view meets comes out in that shape: TumorMapError with its own code and
status; DRF's errors (401/403 not signed in or not allowed, 404, 405, 406, 415, 429, 400
validation with the failing fields in ``details``); Django's Http404, PermissionDenied and
oversized request bodies (413); and, last, any unexpected exception as a logged 500 that
reveals nothing of the server.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from common.errors import TumorMapError

logger = logging.getLogger(__name__)

# DRF's codes where they differ from the ones TumorMapError uses for the same thing.
_CODES = {"invalid": "invalid_input", "parse_error": "invalid_input"}


def _first_message(detail: Any, path: str = "") -> str:
    """The first message of a nested ValidationError detail, prefixed with its field."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            prefix = key if key != "non_field_errors" else ""
            return _first_message(value, f"{path}.{prefix}".strip(".") if prefix else path)
        return ""
    if isinstance(detail, list):
        return _first_message(detail[0], path) if detail else ""
    return f"{path}: {detail}" if path else str(detail)


def _response(
    status: int, code: str, message: str, details: dict[str, Any], headers: dict[str, str]
) -> Response:
    response = Response(
        {"code": code, "message": message, "details": details}, status=status, headers=headers
    )
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, TumorMapError):
        set_rollback()
        return Response(exc.as_dict(), status=exc.http_status)
    if isinstance(exc, RequestDataTooBig):
        set_rollback()
        return _response(413, "payload_too_large", str(exc), {}, {})
    if isinstance(exc, SuspiciousOperation):
        set_rollback()
        return _response(400, "invalid_input", str(exc) or "Bad request.", {}, {})
    response = drf_exception_handler(exc, context)
    if response is None:
        if settings.DEBUG:
            return None  # Django's debug page shows the traceback
        # Not an error DRF knows: a bug or a foreign error nobody wrapped. Logged in full here,
        # answered without internals.
        logger.error("unhandled error in %s", context.get("view"), exc_info=exc)
        set_rollback()
        return _response(
            500, "internal_error", "An internal error occurred; it has been logged.", {}, {}
        )
    if isinstance(exc, drf_exceptions.APIException):
        code = _CODES.get(exc.default_code, exc.default_code)
        if isinstance(exc.detail, dict | list):
            message = _first_message(exc.detail) or str(exc.default_detail)
            details: dict[str, Any] = (
                exc.detail if isinstance(exc.detail, dict) else {"errors": exc.detail}
            )
        else:
            message, details = str(exc.detail), {}
    elif isinstance(exc, Http404):
        code, message, details = "not_found", "Not found.", {}
    elif isinstance(exc, PermissionDenied):
        code, message, details = "permission_denied", "Permission denied.", {}
    else:
        code, message, details = "error", str(exc), {}
    response.data = {"code": code, "message": str(message), "details": details}
    return response
