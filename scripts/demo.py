"""`make demo`: set up the embedded defaults, build the demo cohort, start a worker and the web
server, print where to sign in. Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HOST = os.environ.get("DEMO_HOST", "127.0.0.1")
PORT = os.environ.get("DEMO_PORT", "8000")


def manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT_ROOT, check=True)


def main() -> int:
    # A local demo over plain HTTP: debug mode relaxes the HTTPS-only security settings.
    os.environ.setdefault("DJANGO_DEBUG", "true")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    manage("migrate", "--noinput")
    manage("setup_demo")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "cpu,gpu",
         "--pool", "solo", "--concurrency", "1", "--hostname", "demo@%h", "--loglevel", "INFO",
         "--beat"],
        cwd=PROJECT_ROOT,
    )  # fmt: skip
    web = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"{HOST}:{PORT}", "--noreload"],
        cwd=PROJECT_ROOT,
    )
    time.sleep(1.0)
    print(
        f"\n  TumorMap is running at http://{HOST}:{PORT}/\n"
        "  Sign in as  demo / demo-tumormap   (admin at /admin/)\n"
        "  Ctrl-C stops the web server and the worker.\n",
        flush=True,
    )
    try:
        while worker.poll() is None and web.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (web, worker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (web, worker):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
