"""Settings for the test suite: the project's settings, with everything written under a
temporary folder and plain-HTTP cookies so the test client and a live server work without TLS."""

from __future__ import annotations

import os
import tempfile

# Set before config.settings is imported (it reads them), and inherited by the worker and
# server processes the integration tests start, so they share this folder.
os.environ.setdefault("TUMORMAP_VAR_DIR", tempfile.mkdtemp(prefix="tumormap-test-"))
for _name in (
    "DJANGO_SECURE_SSL_REDIRECT",
    "DJANGO_SESSION_COOKIE_SECURE",
    "DJANGO_CSRF_COOKIE_SECURE",
):
    os.environ.setdefault(_name, "false")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")

from config.settings import *  # noqa: E402,F403

STORAGES["staticfiles"] = {  # noqa: F405
    "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405  (whitenoise warns when absent)

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not memory: the worker processes of the integration tests open the same database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}  # noqa: F405
TUMORMAP_HEARTBEAT_TIMEOUT_S = float(os.environ.get("TUMORMAP_HEARTBEAT_TIMEOUT_S", "600"))
