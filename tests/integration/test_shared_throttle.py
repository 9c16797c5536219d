"""With CACHE_URL on Redis, the token-request limit holds for a client across web processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import override_settings
from rest_framework.test import APIClient

from tests.integration.conftest import PROJECT_ROOT, database_url

# A Redis database of its own: the test clears it, and must not touch the broker's.
CACHE_DB = 14
ADDRESS = "198.51.100.77"

# Another web process: the same settings, the same cache, one more token request.
OTHER_PROCESS = f"""
import json, django
django.setup()
from django.test import Client
response = Client(REMOTE_ADDR={ADDRESS!r}).post(
    "/api/auth/token/", {{"username": "someone", "password": "right-pw-123"}},
    content_type="application/json")
print(json.dumps({{"status": response.status_code, "body": response.json()}}))
"""


def _cache_url(redis_url: str) -> str:
    parts = urlsplit(redis_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{CACHE_DB}", "", ""))


@pytest.mark.django_db(transaction=True)
def test_the_limit_is_shared_by_web_processes(
    redis_url: str, worker_env: Callable[..., dict[str, str]]
) -> None:
    get_user_model().objects.create_user("someone", password="right-pw-123")
    url = _cache_url(redis_url)
    shared = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": "tumormap",
        }
    }
    with override_settings(CACHES=shared):
        cache.clear()
        client = APIClient(REMOTE_ADDR=ADDRESS)
        for _ in range(10):  # TUMORMAP_AUTH_TOKEN_RATE: 10 a minute by default
            wrong = {"username": "someone", "password": "guess"}
            assert client.post("/api/auth/token/", wrong, format="json").status_code == 400
        # The eleventh attempt comes from another process: the count is in Redis, not here.
        env = worker_env(DATABASE_URL=database_url(), CACHE_URL=url)
        done = subprocess.run(
            [sys.executable, "-c", OTHER_PROCESS],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        assert answer["status"] == 429, answer
        assert answer["body"]["code"] == "throttled"
        # Once the counts are gone, the same process may ask again.
        cache.clear()
        env_ok = subprocess.run(
            [sys.executable, "-c", OTHER_PROCESS],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        assert json.loads(env_ok.stdout.strip().splitlines()[-1])["status"] == 200
        cache.clear()
