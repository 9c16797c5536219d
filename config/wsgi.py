"""WSGI entry point (gunicorn config.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Django imports the URLconf (and with it every API module) on the first request; do it now,
# in each server process, so that the first requests after a start do not all wait for it.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018
