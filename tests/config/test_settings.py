"""Settings come from the environment: defaults are embedded, variables switch to real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

DUMP = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "host": db.get("HOST", ""),
    "broker": settings.CELERY_BROKER_URL, "embedded": settings.CELERY_EMBEDDED_BROKER,
    "backend": settings.CELERY_RESULT_BACKEND,
    "broker_options": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    "slides": str(settings.SLIDES_DIR), "artifacts": str(settings.ARTIFACTS_DIR),
    "debug": settings.DEBUG, "ssl_redirect": settings.SECURE_SSL_REDIRECT,
    "secret_key": settings.SECRET_KEY, "cache": settings.CACHES["default"],
}))
"""

CONFIG_VARIABLES = (
    "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "CELERY_RESULT_BACKEND", "DJANGO_DEBUG",
    "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "TUMORMAP_SLIDES_DIR", "TUMORMAP_ARTIFACTS_DIR",
    "TUMORMAP_MEDIA_DIR", "DJANGO_SECURE_SSL_REDIRECT", "DJANGO_SESSION_COOKIE_SECURE",
    "DJANGO_CSRF_COOKIE_SECURE", "CACHE_URL",
)  # fmt: skip


def clean_env(var_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", TUMORMAP_VAR_DIR=str(var_dir))
    env.update(extra)
    return env


def load(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup();" + DUMP],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_defaults_are_embedded_under_var(tmp_path: Path) -> None:
    s = load(clean_env(tmp_path))
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["name"] == str(tmp_path / "db.sqlite3")
    assert s["embedded"] is True
    assert str(s["broker"]).startswith("filesystem://")
    assert s["broker_options"]["data_folder_in"] == str(tmp_path / "broker" / "queue")  # type: ignore[index]
    assert str(s["backend"]).startswith("file://")
    assert s["slides"] == str(tmp_path / "slides")
    assert s["artifacts"] == str(tmp_path / "artifacts")
    assert s["cache"]["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"  # type: ignore[index]
    # Production-safe unless told otherwise.
    assert s["debug"] is False
    assert s["ssl_redirect"] is True


def test_generated_secret_key_is_kept_across_starts(tmp_path: Path) -> None:
    first = load(clean_env(tmp_path))["secret_key"]
    second = load(clean_env(tmp_path))["secret_key"]
    assert first == second
    assert len(str(first)) >= 50
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_environment_switches_to_postgresql_and_redis(tmp_path: Path) -> None:
    s = load(
        clean_env(
            tmp_path,
            DATABASE_URL="postgres://tm:pw@db.example:5432/tumormap",
            REDIS_URL="redis://cache.example:6379/1",
            CACHE_URL="redis://cache.example:6379/2",
            TUMORMAP_SLIDES_DIR=str(tmp_path / "elsewhere"),
            DJANGO_DEBUG="true",
            DJANGO_SECRET_KEY="k" * 60,
        )
    )
    assert s["engine"] == "django.db.backends.postgresql"
    assert s["name"] == "tumormap"
    assert s["host"] == "db.example"
    assert s["broker"] == "redis://cache.example:6379/1"
    assert s["backend"] == "redis://cache.example:6379/1"
    assert s["embedded"] is False
    assert s["cache"] == {  # shared by every web process: throttling holds across them
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://cache.example:6379/2",
        "KEY_PREFIX": "tumormap",
    }
    assert s["slides"] == str(tmp_path / "elsewhere")
    assert s["debug"] is True
    assert s["ssl_redirect"] is False
    assert s["secret_key"] == "k" * 60


def test_celery_broker_url_wins_over_redis_url(tmp_path: Path) -> None:
    s = load(
        clean_env(
            tmp_path, REDIS_URL="redis://a.example:6379/0", CELERY_BROKER_URL="redis://b.example/2"
        )
    )
    assert s["broker"] == "redis://b.example/2"


def test_production_settings_pass_check_deploy(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path,
        DJANGO_SECRET_KEY="a-long-production-secret-" + "x9" * 30,
        DJANGO_ALLOWED_HOSTS="tumormap.example.org",
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_check_deploy_flags_a_debug_configuration(tmp_path: Path) -> None:
    env = clean_env(tmp_path, DJANGO_DEBUG="true")
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "DEBUG" in done.stdout + done.stderr
