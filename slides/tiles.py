"""DeepZoom tiles of slides for the viewer (OpenSeadragon), with an in-memory tile cache.

Tiles are cut by openslide's DeepZoomGenerator from the cached slide handle of
:func:`slides.wsi.reader.open_slide` and encoded as JPEG once; the encoded bytes are kept in an
LRU cache bounded in bytes, so a tile seen before is served without touching the slide or the
JPEG codec. The cache is per process (each web worker has its own), keyed by the slide file's
md5, so a replaced file never serves stale pixels.
"""

from __future__ import annotations

import io
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from common.errors import NotFoundError, SlideUnreadableError
from slides.models import Slide
from slides.selectors import require_ready
from slides.services.tissue import overview_l0_per_px, stored_overview_path
from slides.wsi.reader import SlideReader, open_slide

# 254 + 2 x 1 px overlap = 256 px tiles: OpenSeadragon's default and a whole number of JPEG
# blocks, so edges between tiles stay seamless.
TILE_SIZE = 254
TILE_OVERLAP = 1
TILE_FORMAT = "jpeg"
# Visually lossless for H&E at screen magnification, about 15-25 KB per 256 px tile.
TILE_JPEG_QUALITY = 80
# Memory for encoded tiles per web process: ~3,000-4,000 tiles, several screens of several
# slides; the web container runs a few processes.
TILE_CACHE_BYTES = 64 * 1024**2
# Tiles of a given file never change (the URL names the slide, the cache key its md5), but a
# slide can be re-imported: a day of browser caching, private because tiles need a login.
TILE_MAX_AGE_S = 24 * 3600
DZI_MAX_AGE_S = 3600
# Level 0 as the slide has it: the viewer's coordinates are then level-0 pixels, the frame of
# contours and maps (limit_bounds would shift them by the scanner's bounds offset).
LIMIT_BOUNDS = False
# Coarse DeepZoom levels are cut from one overview image of the whole slide (stored by the
# tissue task at import, slides/services/tissue.py; read here if it is missing): without it
# every tile of the ~10 coarsest levels (each one tile or a few covering the whole slide)
# re-reads most of level 0 when the slide has no pyramid, hundreds of milliseconds each.
# Overviews kept per web process (about 12 MB each at 2048 px).
OVERVIEW_CACHE_SLIDES = 8


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int


class TileCache:
    """A thread-safe LRU of encoded tiles, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = self._hits = self._misses = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits, self._misses, len(self._items), self._bytes, self.max_bytes
            )


tile_cache = TileCache(TILE_CACHE_BYTES)

# One generator per open handle: building one reads the slide's properties.
_generators: weakref.WeakKeyDictionary[SlideReader, DeepZoomGenerator] = weakref.WeakKeyDictionary()
_generators_lock = threading.Lock()


def _generator(reader: SlideReader) -> DeepZoomGenerator:
    with _generators_lock:
        generator = _generators.get(reader)
        if generator is None:
            # The reader wraps the handle and owns its life; DeepZoomGenerator needs the
            # OpenSlide object itself, which the reader only hands out through _handle().
            generator = DeepZoomGenerator(
                reader._handle(),
                tile_size=TILE_SIZE,
                overlap=TILE_OVERLAP,
                limit_bounds=LIMIT_BOUNDS,
            )
            _generators[reader] = generator
        return generator


@dataclass(frozen=True)
class _Overview:
    image: Image.Image
    l0_per_px: float


_overviews: OrderedDict[Hashable, _Overview] = OrderedDict()
_overview_locks: dict[Hashable, threading.Lock] = {}
_overviews_lock = threading.Lock()


def _overview(reader: SlideReader, key: Hashable, stored: Path | None = None) -> _Overview:
    """The whole slide at the overview's scale, loaded once per process (concurrent requests for
    the same slide wait for the first one instead of all reading it)."""
    with _overviews_lock:
        found = _overviews.get(key)
        if found is not None:
            _overviews.move_to_end(key)
            return found
        lock = _overview_locks.setdefault(key, threading.Lock())
    with lock:
        with _overviews_lock:
            found = _overviews.get(key)
        if found is not None:
            return found
        meta = reader.metadata
        l0_per_px = overview_l0_per_px(meta.l0_width, meta.l0_height)
        image = _load_stored(stored)
        if image is None:
            image = Image.fromarray(reader.read_scaled(l0_per_px))
        overview = _Overview(image, l0_per_px)
        with _overviews_lock:
            _overviews[key] = overview
            while len(_overviews) > OVERVIEW_CACHE_SLIDES:
                old, _ = _overviews.popitem(last=False)
                _overview_locks.pop(old, None)
        return overview


def _load_stored(path: Path | None) -> Image.Image | None:
    if path is None or not path.is_file():
        return None
    try:
        with Image.open(path) as stored:
            return stored.convert("RGB")
    except OSError:
        return None  # a damaged file: read the slide instead


def _render_tile(
    generator: DeepZoomGenerator, reader: SlideReader, key: Hashable, level: int,
    col: int, row: int, stored: Path | None = None,
) -> Image.Image:  # fmt: skip
    """Tile ``(level, col, row)``: cut from the overview on coarse levels, else OpenSlide's."""
    l0_per_dz_px = float(2 ** (generator.level_count - 1 - level))
    if l0_per_dz_px < overview_l0_per_px(reader.metadata.l0_width, reader.metadata.l0_height):
        return generator.get_tile(level, (col, row))
    overview = _overview(reader, key, stored)
    width, height = generator.get_tile_dimensions(level, (col, row))
    # The tile's box in DeepZoom pixels of its level, as DeepZoomGenerator lays it out: tiles
    # of TILE_SIZE, each widened by the overlap on every side that has a neighbour.
    dz_x0 = col * TILE_SIZE - (TILE_OVERLAP if col else 0)
    dz_y0 = row * TILE_SIZE - (TILE_OVERLAP if row else 0)
    scale = l0_per_dz_px / overview.l0_per_px  # overview pixels per DeepZoom pixel
    image_w, image_h = overview.image.size
    # The last tiles of a level may reach a fraction of a pixel past the overview (level sizes
    # round up): PIL wants the box inside the image.
    box = (
        dz_x0 * scale,
        dz_y0 * scale,
        min(float(image_w), (dz_x0 + width) * scale),
        min(float(image_h), (dz_y0 + height) * scale),
    )
    # reducing_gap: a box filter first takes large reductions most of the way, cheaply.
    return overview.image.resize(
        (width, height), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0
    )


def slide_dzi(*, slide: Slide) -> str:
    """The DeepZoom descriptor (XML) of a ready slide."""
    require_ready(slide)
    with open_slide(slide.file_path) as reader:
        return str(_generator(reader).get_dzi(TILE_FORMAT))


def _cache_key(slide: Slide, level: int, col: int, row: int) -> Hashable:
    return (slide.md5 or slide.file_path, level, col, row)


def slide_tile(*, slide: Slide, level: int, col: int, row: int) -> tuple[bytes, bool]:
    """The JPEG bytes of DeepZoom tile ``(level, col, row)`` and whether it came from the cache.

    Raises NotFoundError for a level or address outside the slide's pyramid.
    """
    key = _cache_key(slide, level, col, row)
    data = tile_cache.get(key)
    if data is not None:
        return data, True
    require_ready(slide)
    with open_slide(slide.file_path) as reader:
        generator = _generator(reader)
        if not 0 <= level < generator.level_count:
            raise NotFoundError(
                f"DeepZoom level {level} does not exist: this slide has levels 0 to "
                f"{generator.level_count - 1}.",
                details={"level": level, "levels": generator.level_count},
            )
        cols, rows = generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise NotFoundError(
                f"Tile {col}_{row} does not exist at level {level}, which has {cols} x {rows} "
                "tiles.",
                details={"level": level, "col": col, "row": row, "tiles": [cols, rows]},
            )
        try:
            image = _render_tile(
                generator, reader, slide.md5 or slide.file_path, level, col, row,
                stored_overview_path(slide),
            )  # fmt: skip
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise SlideUnreadableError(
                f"Tile {level}/{col}_{row} of {slide.original_filename!r} is unreadable ({exc}).",
                details={"slide": slide.pk},
            ) from exc
    out = io.BytesIO()
    image.save(out, "JPEG", quality=TILE_JPEG_QUALITY)
    data = out.getvalue()
    tile_cache.put(key, data)
    return data, False
