"""Settings, read from the environment (see .env.example).

Zero configuration gives the embedded defaults: SQLite and a filesystem Celery broker under
``var/``, so the demo runs on a bare machine. ``DATABASE_URL`` switches to PostgreSQL,
``CELERY_BROKER_URL`` (or ``REDIS_URL``) the broker to Redis and ``CACHE_URL`` the cache. With
``DJANGO_DEBUG`` off (the default) the security settings are production-grade: ``manage.py
check --deploy`` passes once ``DJANGO_SECRET_KEY`` and ``DJANGO_ALLOWED_HOSTS`` are set.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A .env file in the project root is optional; real environment variables win over it.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG: bool = env.bool("DJANGO_DEBUG", default=False)

# Everything the platform writes (database, broker queue, slides, artifacts) lives under one
# directory so that a demo is removed with one `rm -r var`.
VAR_DIR = Path(env.str("TUMORMAP_VAR_DIR", default=str(BASE_DIR / "var"))).resolve()
SLIDES_DIR = Path(env.str("TUMORMAP_SLIDES_DIR", default=str(VAR_DIR / "slides"))).resolve()
ARTIFACTS_DIR = Path(
    env.str("TUMORMAP_ARTIFACTS_DIR", default=str(VAR_DIR / "artifacts"))
).resolve()
MEDIA_ROOT = Path(env.str("TUMORMAP_MEDIA_DIR", default=str(VAR_DIR / "media"))).resolve()
MEDIA_URL = "/media/"


def _secret_key() -> str:
    """The secret key: from the environment, else one generated once and kept under var/.

    A generated key keeps sessions valid across restarts of a demo without anyone having to
    invent a key; production sets DJANGO_SECRET_KEY.
    """
    from_env: str = env.str("DJANGO_SECRET_KEY", default="")
    if from_env:
        return from_env
    key_file = VAR_DIR / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


SECRET_KEY = _secret_key()
ALLOWED_HOSTS: list[str] = env.list(
    "DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS: list[str] = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "slides",
    "training",
    "evaluation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A web server and a worker write the same file: wait for the lock rather than fail.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("TUMORMAP_STATIC_ROOT", default=str(VAR_DIR / "static"))).resolve()
# static/vendor/ holds front-end packages installed from the npm registry at set-up.
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# --- Security: strict unless DEBUG, each switch overridable for a reverse proxy set-up -------
SECURE_SSL_REDIRECT: bool = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE: bool = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE: bool = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS: int = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
BEHIND_TLS_PROXY: bool = env.bool("DJANGO_BEHIND_TLS_PROXY", default=False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Uploads ------------------------------------------------------------------------------------
# Whole-slide images reach several GB; the default keeps a single upload below what the
# default disk of a worker host holds twice (temporary file plus the final copy).
# Whole-slide inference reads patches in this many worker processes (0: threads). A GPU
# worker needs them: threads stop scaling near 3,000 patches/s, below what one GPU infers.
TUMORMAP_INFER_READER_PROCESSES: int = env.int("TUMORMAP_INFER_READER_PROCESSES", default=0)
if TUMORMAP_INFER_READER_PROCESSES < 0:
    raise ImproperlyConfigured("TUMORMAP_INFER_READER_PROCESSES must be >= 0")

TUMORMAP_MAX_UPLOAD_BYTES: int = env.int("TUMORMAP_MAX_UPLOAD_BYTES", default=20 * 1024**3)
# Partial uploads wait here; under VAR_DIR, on the same file system as SLIDES_DIR by default, so
# a finished upload is moved into place by a rename, not copied.
TUMORMAP_UPLOAD_DIR = Path(
    env.str("TUMORMAP_UPLOAD_DIR", default=str(VAR_DIR / "uploads"))
).resolve()
# One chunk is one request: small enough that a dropped connection loses little and a reverse
# proxy's body limit can be set to match, large enough that a multi-GB slide needs few requests.
TUMORMAP_UPLOAD_CHUNK_MAX_BYTES: int = env.int(
    "TUMORMAP_UPLOAD_CHUNK_MAX_BYTES", default=64 * 1024**2
)

# --- Celery ---------------------------------------------------------------------------------------
REDIS_URL: str = env.str("REDIS_URL", default="")
CELERY_BROKER_URL: str = env.str(
    "CELERY_BROKER_URL", default=REDIS_URL or "filesystem://localhost/"
)
CELERY_EMBEDDED_BROKER = CELERY_BROKER_URL.startswith("filesystem://")
BROKER_DIR = VAR_DIR / "broker"
if CELERY_EMBEDDED_BROKER:
    # kombu's filesystem transport: messages are files in one folder shared by the web server
    # and the workers of this host, so no broker server is needed for a demo.
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, str | bool] = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        # Broadcast messages (worker control, revokes) get folders of their own too; kombu
        # would otherwise create ./control in whatever directory a process started in.
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    CELERY_RESULT_BACKEND: str = env.str(
        "CELERY_RESULT_BACKEND", default=f"file://{BROKER_DIR / 'results'}"
    )
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
    CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=CELERY_BROKER_URL)
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per worker process: a training run holds a GPU for hours, and a
# prefetched second run would wait behind it instead of going to an idle GPU.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 7 * 24 * 3600
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The watchdog re-sends runs whose worker died or whose message a restarted broker forgot.
CELERY_BEAT_SCHEDULE = {
    "training-watchdog": {
        "task": "training.tasks.watchdog",
        "schedule": env.float("TUMORMAP_WATCHDOG_INTERVAL_S", default=30.0),
        "options": {"queue": "cpu"},
    },
    # Unfinished uploads keep their partial file; after a week without a chunk they are
    # aborted and the file removed, so abandoned uploads cannot fill the disk.
    "purge-stale-uploads": {
        "task": "slides.purge_stale_uploads",
        "schedule": env.float("TUMORMAP_UPLOAD_PURGE_INTERVAL_S", default=3600.0),
        "options": {"queue": "cpu"},
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# A running run that has not reported for this long is taken for dead and queued again (it
# resumes from its last checkpoint). Validation of a big split reports nothing for minutes.
TUMORMAP_HEARTBEAT_TIMEOUT_S: float = env.float("TUMORMAP_HEARTBEAT_TIMEOUT_S", default=600.0)

# --- Cache ----------------------------------------------------------------------------------------
# Token-request throttling counts in the cache: a shared one (CACHE_URL=redis://...) makes the
# limit hold for a client across every web process and host; the default, memory, counts per
# process. Use a Redis database of its own, not the broker's: the cache may be cleared.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
CACHES["default"]["KEY_PREFIX"] = "tumormap"

# --- REST framework -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.exception_handler.exception_handler",
    # Token requests per client address (successful or not): a brake on password guessing.
    "DEFAULT_THROTTLE_RATES": {"auth-token": env.str("TUMORMAP_AUTH_TOKEN_RATE", default="10/min")},
    # Behind one reverse proxy (DJANGO_BEHIND_TLS_PROXY), the client is the address it adds.
    "NUM_PROXIES": 1 if BEHIND_TLS_PROXY else None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "TumorMap API",
    "DESCRIPTION": "Cohorts of whole-slide images, weakly supervised training runs, tumor maps "
    "and their evaluation against pathologists' contours.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
