"""Progress bars for management commands: always on stderr, so that --json stdout stays clean."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


def stderr_progress() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A progress callback (stage, done, total) drawing one bar per stage, and a closer."""
    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=True)
        bar.n = done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close
