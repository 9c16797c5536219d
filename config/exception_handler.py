"""The single mapping from exceptions to API responses: ``{"code", "message", "details"}``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from common.errors import TumorMapError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, TumorMapError):
        return Response(exc.as_dict(), status=exc.http_status)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf_exceptions.APIException):
        code = exc.default_code
        message = str(exc.detail) if not isinstance(exc.detail, dict | list) else exc.default_detail
        details = exc.detail if isinstance(exc.detail, dict | list) else {}
    elif isinstance(exc, Http404):
        code, message, details = "not_found", "Not found.", {}
    elif isinstance(exc, PermissionDenied):
        code, message, details = "permission_denied", "Permission denied.", {}
    else:
        code, message, details = "error", str(exc), {}
    response.data = {"code": code, "message": str(message), "details": details}
    return response
