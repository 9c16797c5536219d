"""The code version recorded with every run, checkpoint and map."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_version() -> str:
    """TUMORMAP_CODE_VERSION (set in images), else the git commit, else the package version."""
    if explicit := os.environ.get("TUMORMAP_CODE_VERSION"):
        return explicit
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
        return f"git:{done.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"tumormap {metadata.version('tumormap')}"
    except metadata.PackageNotFoundError:
        return "unknown"
