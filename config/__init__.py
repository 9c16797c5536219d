"""The Django project package (settings, URLs, the Celery app, WSGI/ASGI entry points).

It is called ``config`` and not ``platform``: a top-level ``platform`` package would shadow the
standard library's ``platform`` module, which uuid, Django and Celery import.
"""

from config.celery import app as celery_app

__all__ = ["celery_app"]
