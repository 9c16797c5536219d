"""DeepZoom tile serving: tiles/s and latency (p50, p99) with concurrent clients, cold and warm.

The project's own server is started with gunicorn (gthread worker, as in
``platform/gunicorn.conf.py``) on 127.0.0.1 only, against a throw-away var/ folder holding a
SQLite database with one user, one cohort and the real ``cmu-1-small-region.svs`` (2220 x 2967;
13 DeepZoom levels). Every request goes through the whole stack: token authentication, the
cohort-membership check, the tile cache or OpenSlide + JPEG encoding.

- ``cold``: right after the server starts and the viewer's first request (the ``.dzi``, which
  opens the slide) reached every worker thread, with empty tile caches, every tile of the
  slide is requested exactly once by ``--clients`` concurrent clients (Python threads, keep-alive).
- ``warm``: after every tile was requested ``--warmup`` times (each gunicorn worker process has
  its own cache, so each tile must reach each worker), the clients request all tiles over and
  over for ``--seconds``: with ``wrk`` (C, epoll; installed from Debian) when it is on the PATH,
  else with the Python client. The Python client is reported as well: on a 2-core machine the
  load generator competes with the server for the CPU, the lighter wrk much less so.

The server keeps its database connections (``DATABASE_CONN_MAX_AGE=60``, as a deployment
should; ``--conn-max-age 0`` measures a new connection per request).

Usage: ``.venv/bin/python bench/bench_tiles.py [--clients 32] [--seconds 10] [--workers 2]
[--threads 8] [--conn-max-age 60]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SLIDE = PROJECT_ROOT.parent / "shared" / "data" / "slides" / "cmu-1-small-region.svs"
HOST = "127.0.0.1"
# Bounds: no run may hang the machine or a CI job.
MAX_SECONDS = 120.0
REQUEST_TIMEOUT_S = 30.0
TARGET_P50_WARM_MS = 15.0


@dataclass
class Result:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    wall_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    rps: float | None = None

    def finish(self) -> Result:
        if self.latencies_ms:
            ordered = sorted(self.latencies_ms)
            self.p50_ms = statistics.median(ordered)
            self.p99_ms = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            self.rps = len(ordered) / self.wall_s if self.wall_s else None
        return self

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.errors

    @property
    def failures(self) -> int:
        return self.errors + sum(n for s, n in self.statuses.items() if s != 200)


def setup_database(var_dir: Path) -> tuple[str, int, list[str]]:
    """Migrate a fresh database, create a user, a cohort and the slide; return the token, the
    slide id and the path of every tile."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from openslide.deepzoom import DeepZoomGenerator
    from rest_framework.authtoken.models import Token

    from slides.models import Slide
    from slides.services import cohort_create, cohort_import, slide_compute_tissue
    from slides.tiles import LIMIT_BOUNDS, TILE_OVERLAP, TILE_SIZE
    from slides.wsi.reader import open_slide

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench", password=secrets.token_urlsafe(16))
    token = Token.objects.create(user=user).key
    cohort = cohort_create(name="bench", owner=user)
    cohort_import(cohort=cohort, path=SLIDE)
    slide = Slide.objects.get(cohort=cohort)
    # What the cpu-queue task does after every import: thumbnail, tissue mask, tile overview.
    slide_compute_tissue(slide=slide)
    with open_slide(slide.file_path) as reader:
        generator = DeepZoomGenerator(
            reader._handle(), tile_size=TILE_SIZE, overlap=TILE_OVERLAP, limit_bounds=LIMIT_BOUNDS
        )
        paths = [
            f"/api/slides/{slide.pk}_files/{level}/{col}_{row}.jpeg"
            for level in range(generator.level_count)
            for col in range(generator.level_tiles[level][0])
            for row in range(generator.level_tiles[level][1])
        ]
    return token, slide.pk, paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(env: dict[str, str], port: int, workers: int, threads: int) -> subprocess.Popen:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = [
        str(gunicorn), "config.wsgi", "--bind", f"{HOST}:{port}", "--worker-class", "gthread",
        "--workers", str(workers), "--threads", str(threads), "--log-level", "warning",
        "--timeout", "60",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)


def wait_ready(port: int, token: str, deadline_s: float = 60.0) -> None:
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/api/me/", headers={"Authorization": f"Token {token}"})
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def python_clients(
    name: str, port: int, token: str, paths: list[str], clients: int, *,
    repeat: bool, seconds: float,
) -> Result:  # fmt: skip
    """``clients`` threads with keep-alive connections; each path once (``repeat`` False) or
    round after round until ``seconds`` have passed."""
    result = Result(name)
    lock = threading.Lock()
    position = 0
    deadline = time.monotonic() + min(seconds, MAX_SECONDS)
    headers = {"Authorization": f"Token {token}"}

    def next_path() -> str | None:
        nonlocal position
        with lock:
            if not repeat and position >= len(paths):
                return None
            if time.monotonic() > deadline:
                return None
            path = paths[position % len(paths)]
            position += 1
            return path

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        local: list[float] = []
        statuses: Counter[int] = Counter()
        cache: Counter[str] = Counter()
        errors = 0
        while (path := next_path()) is not None:
            start = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
                continue
            local.append((time.perf_counter() - start) * 1000)
            statuses[response.status] += 1
            cache[response.getheader("X-Tile-Cache", "?")] += 1
        conn.close()
        with lock:
            result.latencies_ms.extend(local)
            result.statuses.update(statuses)
            result.cache.update(cache)
            result.errors += errors

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - started
    return result.finish()


WRK_SCRIPT = """
local paths = {%s}
local i = 0
local hits, misses = 0, 0
wrk.headers["Authorization"] = "Token %s"
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
response = function(status, headers, body)
  if headers["X-Tile-Cache"] == "hit" then hits = hits + 1 else misses = misses + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("P50_US %%d\\nP99_US %%d\\n", latency:percentile(50),
                         latency:percentile(99)))
end
"""


def wrk_clients(port: int, token: str, paths: list[str], clients: int, seconds: float) -> Result:
    result = Result("warm (wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (", ".join(f'"{p}"' for p in paths), token))
    try:
        out = subprocess.run(
            ["wrk", "-t", "2", "-c", str(clients), "-d", f"{int(min(seconds, MAX_SECONDS))}s",
             "--timeout", f"{int(REQUEST_TIMEOUT_S)}s", "-s", script.name,
             f"http://{HOST}:{port}"],
            capture_output=True, text=True, check=True, timeout=MAX_SECONDS + 30,
        ).stdout  # fmt: skip
    finally:
        Path(script.name).unlink(missing_ok=True)
    total = int(re.search(r"(\d+) requests in ([\d.]+)(m?s)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    result.errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        result.errors += sum(int(g) for g in socket_errors.groups())
    result.statuses[200] = total - result.errors
    result.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result.p50_ms = int(re.search(r"P50_US (\d+)", out).group(1)) / 1000  # type: ignore[union-attr]
    result.p99_ms = int(re.search(r"P99_US (\d+)", out).group(1)) / 1000  # type: ignore[union-attr]
    return result


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))  # fmt: skip
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=4, help="passes over all tiles")
    parser.add_argument(
        "--conn-max-age", type=int, default=60,
        help="DATABASE_CONN_MAX_AGE of the server (0: a new database connection per request)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary var/ folder")
    args = parser.parse_args()
    if not SLIDE.is_file():
        sys.exit(f"{SLIDE} is absent: the benchmark needs the shared test data")

    var_dir = Path(tempfile.mkdtemp(prefix="bench-tiles-"))
    env = {
        **os.environ,
        "TUMORMAP_VAR_DIR": str(var_dir),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "WARNING",
        "DATABASE_CONN_MAX_AGE": str(args.conn_max_age),
    }
    os.environ.update(env)
    sys.path.insert(0, str(PROJECT_ROOT))
    token, slide_id, paths = setup_database(var_dir)
    port = free_port()
    server = start_server(env, port, args.workers, args.threads)
    results: list[Result] = []
    try:
        wait_ready(port, token)
        # A viewer loads the .dzi before any tile: let every worker thread do so (it opens the
        # slide), so that "cold" measures tiles with empty tile caches, not process start-up.
        dzi = f"/api/slides/{slide_id}.dzi"
        python_clients("open", port, token, [dzi] * args.workers * args.threads * 2,
                       args.clients, repeat=False, seconds=MAX_SECONDS)  # fmt: skip
        results.append(python_clients("cold (Python)", port, token, paths, args.clients,
                                      repeat=False, seconds=MAX_SECONDS))  # fmt: skip
        for _ in range(args.warmup):
            python_clients("warm-up", port, token, paths, args.clients, repeat=False,
                           seconds=MAX_SECONDS)  # fmt: skip
        results.append(python_clients("warm (Python)", port, token, paths, args.clients,
                                      repeat=True, seconds=args.seconds))  # fmt: skip
        if shutil.which("wrk"):
            results.append(wrk_clients(port, token, paths, args.clients, args.seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(var_dir, ignore_errors=True)

    print(f"Machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}")
    print(f"Slide: {SLIDE.name}, {len(paths)} DeepZoom tiles (slide id {slide_id}); gunicorn "
          f"gthread, {args.workers} workers x {args.threads} threads; {args.clients} clients; "
          f"DATABASE_CONN_MAX_AGE={args.conn_max_age}\n")  # fmt: skip
    print("| pass | requests | failures | tiles/s | p50 ms | p99 ms | cache hits |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        hits = f"{r.cache['hit'] / max(1, sum(r.cache.values())):.0%}" if r.cache else "n/a"
        print(f"| {r.name} | {r.requests} | {r.failures} | {r.rps or 0:.0f} | "
              f"{r.p50_ms or 0:.1f} | {r.p99_ms or 0:.1f} | {hits} |")  # fmt: skip
    warm = [r for r in results if r.name.startswith("warm")]
    best = min((r.p50_ms for r in warm if r.p50_ms is not None), default=None)
    if best is not None:
        verdict = "met" if best < TARGET_P50_WARM_MS else "NOT met"
        print(f"\nwarm p50 target < {TARGET_P50_WARM_MS:g} ms: {verdict} ({best:.1f} ms)")


if __name__ == "__main__":
    main()
