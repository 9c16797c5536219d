"""The one wrapper around OpenSlide: open, describe and read whole-slide images.

Everything else in TumorMap reads slides through :class:`SlideReader` (or :func:`open_slide`,
its cached form), so OpenSlide, PIL and OS errors are turned into
:class:`~common.errors.SlideUnreadableError` here and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import openslide
from PIL import Image

from common.errors import InvalidInputError, NotFoundError, SlideUnreadableError
from slides.wsi.jpeg_tiles import JpegTiles

logger = logging.getLogger(__name__)

# When a slide says nothing of its resolution, TCGA-style 20x scans are by far the most common:
# 0.5 um/px is the least surprising guess, and it is always flagged as assumed.
FALLBACK_MPP = 0.5
# Microns per pixel at 1x: mpp = 10 / objective power is the usual scanner convention
# (20x -> 0.5 um/px, 40x -> 0.25 um/px).
MPP_TIMES_POWER = 10.0
# A level is "fine enough" for a target resolution when it is at most this much coarser: scanners
# report 0.499 or 0.5025 um/px for a nominal 0.5, which must not force a read from a finer level.
MPP_TOLERANCE = 0.02
# Open handles kept by open_slide(): each one holds file descriptors and OpenSlide's own tile
# cache, and a training step touches one slide at a time, so a few dozen is plenty.
SLIDE_CACHE_SIZE = 32
# Largest region read in one OpenSlide call when building thumbnails: 16 Mpx is 64 MiB of RGBA,
# which bounds memory on single-level slides of several gigapixels.
MAX_READ_PIXELS = 1 << 24
# Integer downsampling factors (Image.reduce) are preferred when the exact factor is this close:
# a sub-pixel size error is invisible, the box filter of reduce() is exact and much faster.
INTEGER_FACTOR_TOLERANCE = 0.01
WHITE = (255, 255, 255)
# Patches at level 0 of a tiled JPEG TIFF (Aperio, generic TIFF) are cut from tiles decoded once
# (slides.wsi.jpeg_tiles), pixel for pixel what OpenSlide returns, several times faster; False
# reads everything through OpenSlide (benchmarks compare the two).
DIRECT_JPEG_TILES = True


@dataclass(frozen=True)
class SlideMetadata:
    """What a slide is: size, pyramid, resolution (and whether it was assumed)."""

    vendor: str | None
    l0_width: int
    l0_height: int
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_assumed: bool
    mpp_source: str  # "metadata" | "objective_power" | "default"
    objective_power: float | None
    associated_images: tuple[str, ...]
    warnings: tuple[str, ...]

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of a pyramid level."""
        return self.mpp * self.level_downsamples[level]


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Return OpenSlide's vendor name for a file, judged by content (not extension), or None."""
    try:
        return openslide.OpenSlide.detect_format(os.fspath(path))
    except (openslide.OpenSlideError, OSError, ValueError):
        return None


def _unreadable(path: Path, reason: str, **details: Any) -> SlideUnreadableError:
    return SlideUnreadableError(
        f"cannot read slide {path.name!r}: {reason}", details={"path": str(path), **details}
    )


def _check_file(path: Path) -> None:
    """Fail early, with a precise reason, on paths that cannot hold a slide."""
    try:
        if not path.exists():
            raise _unreadable(path, "the file does not exist")
        if path.is_dir():
            raise _unreadable(path, "it is a directory, not a file")
        if path.stat().st_size == 0:
            raise _unreadable(path, "the file is empty")
        with path.open("rb"):
            pass
    except OSError as exc:
        raise _unreadable(path, f"the file cannot be opened ({exc.strerror or exc})") from exc


def _float_property(props: Any, key: str) -> float | None:
    raw = props.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return value


def _resolve_mpp(
    props: Any, default_mpp: float | None, name: str
) -> tuple[float, bool, str, float | None, list[str]]:
    """Resolution from metadata, else objective power, else the default (flagged as assumed)."""
    power = _float_property(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER)
    mpp_x = _float_property(props, openslide.PROPERTY_NAME_MPP_X)
    mpp_y = _float_property(props, openslide.PROPERTY_NAME_MPP_Y)
    found = [v for v in (mpp_x, mpp_y) if v is not None]
    if found:
        return sum(found) / len(found), False, "metadata", power, []
    if power is not None:
        mpp = MPP_TIMES_POWER / power
        warning = (
            f"{name}: no microns-per-pixel metadata; derived {mpp:g} um/px from the "
            f"{power:g}x objective power"
        )
        return mpp, True, "objective_power", power, [warning]
    if default_mpp is not None:
        if not (math.isfinite(default_mpp) and default_mpp > 0):
            raise InvalidInputError(f"default_mpp must be a positive number, got {default_mpp!r}")
        mpp, origin = default_mpp, "the given default"
    else:
        mpp, origin = FALLBACK_MPP, "the built-in fallback"
    warning = (
        f"{name}: no microns-per-pixel nor objective-power metadata; assuming {mpp:g} um/px "
        f"({origin})"
    )
    return mpp, True, "default", power, [warning]


def _rgba_to_rgb(image: Image.Image) -> Image.Image:
    """Composite an OpenSlide RGBA region on white (outside the slide it is transparent)."""
    if image.mode == "RGB":
        return image
    if image.mode != "RGBA":
        return image.convert("RGB")
    alpha_min, _ = image.getchannel("A").getextrema()
    if alpha_min == 255:
        return image.convert("RGB")
    background = Image.new("RGB", image.size, WHITE)
    background.paste(image, mask=image.getchannel("A"))
    return background


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize with a filter that does not alias: reduce() for integer factors, else LANCZOS."""
    if image.size == size:
        return image
    fx, fy = image.width / size[0], image.height / size[1]
    factor = round(fx)
    if (
        factor >= 2
        and abs(fx - factor) <= INTEGER_FACTOR_TOLERANCE * factor
        and abs(fy - factor) <= INTEGER_FACTOR_TOLERANCE * factor
    ):
        reduced = image.reduce(factor)
        if reduced.size == size:
            return reduced
        image = reduced
    return image.resize(size, Image.Resampling.LANCZOS)


class SlideReader:
    """An open whole-slide image. A context manager; ``close()`` may be called more than once.

    Thread-safe for reads: OpenSlide handles can be shared between threads.
    """

    def __init__(self, path: str | os.PathLike[str], *, default_mpp: float | None = None) -> None:
        self.path = Path(os.fspath(path))
        _check_file(self.path)
        vendor = detect_format(self.path)
        if vendor is None:
            raise _unreadable(
                self.path, "it is not a whole-slide image format OpenSlide recognises"
            )
        try:
            self._slide: openslide.OpenSlide | None = openslide.OpenSlide(self.path)
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise _unreadable(self.path, f"OpenSlide failed to open it ({exc})") from exc
        try:
            self.metadata = self._read_metadata(self._slide, vendor, default_mpp)
        except (openslide.OpenSlideError, OSError, ValueError, KeyError) as exc:
            self.close()
            raise _unreadable(self.path, f"its metadata is unreadable ({exc})") from exc
        for warning in self.metadata.warnings:
            logger.warning(warning)
        self._tiles: JpegTiles | None = None
        self._tiles_checked = False
        self._tiles_lock = threading.Lock()

    def _read_metadata(
        self, slide: openslide.OpenSlide, vendor: str, default_mpp: float | None
    ) -> SlideMetadata:
        props = slide.properties
        mpp, assumed, source, power, warnings = _resolve_mpp(props, default_mpp, self.path.name)
        width, height = slide.dimensions
        if width <= 0 or height <= 0:
            raise ValueError(f"empty level 0 ({width}x{height})")
        return SlideMetadata(
            vendor=props.get(openslide.PROPERTY_NAME_VENDOR, vendor),
            l0_width=int(width),
            l0_height=int(height),
            level_count=int(slide.level_count),
            level_dimensions=tuple((int(w), int(h)) for w, h in slide.level_dimensions),
            level_downsamples=tuple(float(d) for d in slide.level_downsamples),
            mpp=float(mpp),
            mpp_assumed=assumed,
            mpp_source=source,
            objective_power=power,
            associated_images=tuple(slide.associated_images.keys()),
            warnings=tuple(warnings),
        )

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the OpenSlide handle; further reads raise SlideUnreadableError."""
        slide, self._slide = getattr(self, "_slide", None), None
        if slide is not None:
            slide.close()
        tiles, self._tiles = getattr(self, "_tiles", None), None
        if tiles is not None:
            tiles.close()

    @property
    def closed(self) -> bool:
        return self._slide is None

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<SlideReader {self.path.name!r} {state}>"

    def _handle(self) -> openslide.OpenSlide:
        if self._slide is None:
            raise SlideUnreadableError(
                f"slide {self.path.name!r} is closed", details={"path": str(self.path)}
            )
        return self._slide

    # -- reading ---------------------------------------------------------------------------

    def best_level(self, target_mpp: float) -> int:
        """The coarsest level whose resolution is at least as fine as ``target_mpp``."""
        if not (math.isfinite(target_mpp) and target_mpp > 0):
            raise InvalidInputError(f"target_mpp must be a positive number, got {target_mpp!r}")
        limit = target_mpp * (1.0 + MPP_TOLERANCE)
        best = 0
        for level in range(self.metadata.level_count):
            if self.metadata.level_mpp(level) <= limit:
                best = level
        return best

    def _read_rgba(
        self, l0_xy: tuple[int, int], level: int, l_size: tuple[int, int]
    ) -> Image.Image:
        try:
            return self._handle().read_region(
                (int(l0_xy[0]), int(l0_xy[1])), level, (int(l_size[0]), int(l_size[1]))
            )
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise _unreadable(
                self.path, f"reading {l_size[0]}x{l_size[1]} px at level {level} failed ({exc})"
            ) from exc

    def read_region_l0(
        self, l0_xy: tuple[int, int], level: int, l_size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``l_size`` (w, h) level pixels of ``level`` from level-0 corner ``l0_xy`` as RGB."""
        if not 0 <= level < self.metadata.level_count:
            raise InvalidInputError(
                f"level {level} does not exist in {self.path.name!r} "
                f"({self.metadata.level_count} levels)"
            )
        return np.asarray(_rgba_to_rgb(self._read_rgba(l0_xy, level, l_size)))

    def read_patch_image(self, l0_xy: tuple[int, int], size: int, target_mpp: float) -> Image.Image:
        """Like :meth:`read_patch` but returns the PIL image."""
        level, l_size = self._patch_source(size, target_mpp)
        tiles = self._jpeg_tiles() if level == 0 else None
        if tiles is not None:
            region = np.empty((l_size, l_size, 3), dtype=np.uint8)
            image = Image.fromarray(self._read_tiles(tiles, l0_xy, region))
        else:
            image = _rgba_to_rgb(self._read_rgba(l0_xy, level, (l_size, l_size)))
        return _resize(image, (size, size))

    def read_patch_into(self, out: np.ndarray, l0_xy: tuple[int, int], target_mpp: float) -> None:
        """Read a patch straight into ``out`` (size, size, 3) uint8, as :meth:`read_patch`."""
        size = int(out.shape[0])
        level, l_size = self._patch_source(size, target_mpp)
        tiles = self._jpeg_tiles() if level == 0 and l_size == size else None
        if tiles is not None:
            self._read_tiles(tiles, l0_xy, out)  # no resize: straight into the batch
        else:
            out[...] = self.read_patch_image(l0_xy, size, target_mpp)

    def _patch_source(self, size: int, target_mpp: float) -> tuple[int, int]:
        """The level a ``size`` px patch at ``target_mpp`` is read from, and its side there."""
        if size <= 0:
            raise InvalidInputError(f"patch size must be positive, got {size}")
        level = self.best_level(target_mpp)
        level_factor = target_mpp / self.metadata.level_mpp(level)
        return level, max(1, round(size * level_factor))

    def _jpeg_tiles(self) -> JpegTiles | None:
        if not DIRECT_JPEG_TILES:
            return None
        if not self._tiles_checked:
            with self._tiles_lock:
                if not self._tiles_checked:
                    meta = self.metadata
                    self._tiles = JpegTiles.open(
                        self.path, vendor=meta.vendor, size=(meta.l0_width, meta.l0_height)
                    )
                    self._tiles_checked = True
        return self._tiles

    def _read_tiles(self, tiles: JpegTiles, l0_xy: tuple[int, int], out: np.ndarray) -> np.ndarray:
        """Fill ``out`` from level 0 at ``l0_xy`` through the decoded JPEG tiles."""
        if self._slide is None:
            self._handle()  # raises: the slide is closed
        try:
            tiles.read_into(out, int(l0_xy[0]), int(l0_xy[1]))
        except Exception as exc:  # a corrupt tile: libjpeg, tifffile and OS errors alike
            raise _unreadable(
                self.path,
                f"reading {out.shape[1]}x{out.shape[0]} px at level 0 failed ({exc})",
            ) from exc
        return out

    def read_patch(self, l0_xy: tuple[int, int], size: int, target_mpp: float) -> np.ndarray:
        """Read a ``(size, size, 3)`` RGB uint8 patch at ``target_mpp`` um/px.

        ``l0_xy`` is the top-left corner in level-0 pixels. The patch is read with a single
        OpenSlide call from the coarsest level that is at least as fine as ``target_mpp``, then
        downsampled with an anti-aliasing filter. Parts past the slide border are white.
        """
        return np.asarray(self.read_patch_image(l0_xy, size, target_mpp))

    def read_scaled(self, l0_per_px: float) -> np.ndarray:
        """The whole slide as RGB at exactly ``l0_per_px`` level-0 pixels per pixel.

        Pixel ``(i, j)`` covers level-0 ``[j * f, (j + 1) * f) x [i * f, (i + 1) * f)``; the shape
        is ``(ceil(H / f), ceil(W / f))``, so the last row and column may overhang the slide
        (white there). Reads from the best pyramid level in bands of at most
        ``MAX_READ_PIXELS``.
        """
        meta = self.metadata
        if not (math.isfinite(l0_per_px) and l0_per_px > 0):
            raise InvalidInputError(f"l0_per_px must be a positive number, got {l0_per_px!r}")
        # The epsilon keeps an exact division (W / (W / n)) from rounding up to n + 1.
        out_w = max(1, math.ceil(meta.l0_width / l0_per_px - 1e-6))
        out_h = max(1, math.ceil(meta.l0_height / l0_per_px - 1e-6))
        level = self.best_level(meta.mpp * l0_per_px)
        downsample = meta.level_downsamples[level]
        scale = l0_per_px / downsample  # level pixels per output pixel
        l_read_w = max(1, math.ceil(out_w * scale))
        rows_per_band = max(1, int(MAX_READ_PIXELS / l_read_w / max(scale, 1.0)))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        # Each band is read with a margin so that the resampling filter sees real neighbours.
        margin = 3 * math.ceil(max(scale, 1.0))
        for o_y0 in range(0, out_h, rows_per_band):
            o_y1 = min(out_h, o_y0 + rows_per_band)
            l_y0 = max(0, math.floor(o_y0 * scale) - margin)
            l_y1 = math.ceil(o_y1 * scale) + margin
            l0_y = round(l_y0 * downsample)
            band = _rgba_to_rgb(self._read_rgba((0, l0_y), level, (l_read_w, l_y1 - l_y0)))
            box = (0.0, o_y0 * scale - l_y0, out_w * scale, o_y1 * scale - l_y0)
            resized = band.resize((out_w, o_y1 - o_y0), Image.Resampling.LANCZOS, box=box)
            out[o_y0:o_y1] = np.asarray(resized)
        return out

    def thumbnail(self, max_size: int) -> np.ndarray:
        """The whole slide as RGB, at most ``max_size`` px on its longer side (never upscaled)."""
        if max_size <= 0:
            raise InvalidInputError(f"max_size must be positive, got {max_size}")
        meta = self.metadata
        l0_per_px = max(1.0, max(meta.l0_width, meta.l0_height) / max_size)
        return self.read_scaled(l0_per_px)

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (``label``, ``macro``, ``thumbnail`` ...) as RGB uint8."""
        if name not in self.metadata.associated_images:
            raise NotFoundError(
                f"slide {self.path.name!r} has no associated image {name!r} "
                f"(it has: {', '.join(self.metadata.associated_images) or 'none'})",
                details={"name": name, "available": list(self.metadata.associated_images)},
            )
        try:
            image = self._handle().associated_images[name]
        except (openslide.OpenSlideError, OSError, ValueError, KeyError) as exc:
            reason = f"associated image {name!r} is unreadable ({exc})"
            raise _unreadable(self.path, reason) from exc
        return np.asarray(_rgba_to_rgb(image))


# -- the handle cache ----------------------------------------------------------------------


class _Entry:
    __slots__ = ("evicted", "reader", "users")

    def __init__(self, reader: SlideReader) -> None:
        self.reader = reader
        self.users = 0
        self.evicted = False


_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()


def _cache_key(path: str | os.PathLike[str], default_mpp: float | None) -> tuple[Any, ...]:
    resolved = Path(os.fspath(path)).resolve()
    try:
        stat = resolved.stat()
        # A file replaced in place (same name, new content) must not be served from a stale handle.
        identity: tuple[int, ...] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except OSError:
        identity = ()
    return (str(resolved), identity, default_mpp)


def _release(entry: _Entry) -> None:
    close = False
    with _cache_lock:
        entry.users -= 1
        close = entry.evicted and entry.users == 0
    if close:
        entry.reader.close()


@contextlib.contextmanager
def open_slide(
    path: str | os.PathLike[str], *, default_mpp: float | None = None
) -> Iterator[SlideReader]:
    """Yield a :class:`SlideReader` served from a thread-safe LRU cache of open handles.

    Leaving the ``with`` block does not close the handle; it stays cached until evicted (least
    recently used beyond ``SLIDE_CACHE_SIZE``) or :func:`clear_slide_cache`. An evicted handle
    still in use is closed when its last user leaves.
    """
    key = _cache_key(path, default_mpp)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None:
            _cache.move_to_end(key)
            entry.users += 1
    if entry is None:
        # Opened outside the lock: opening can take a while and must not block other slides.
        fresh = _Entry(SlideReader(path, default_mpp=default_mpp))
        to_close: list[SlideReader] = []
        with _cache_lock:
            entry = _cache.get(key)
            if entry is None:
                entry = fresh
                _cache[key] = entry
                while len(_cache) > SLIDE_CACHE_SIZE:
                    _, old = _cache.popitem(last=False)
                    old.evicted = True
                    if old.users == 0:
                        to_close.append(old.reader)
            else:
                _cache.move_to_end(key)
                to_close.append(fresh.reader)
            entry.users += 1
        for reader in to_close:
            reader.close()
    try:
        yield entry.reader
    finally:
        _release(entry)


def clear_slide_cache() -> None:
    """Close every cached handle (those in use are closed when their users are done)."""
    with _cache_lock:
        entries = list(_cache.values())
        _cache.clear()
        idle = []
        for entry in entries:
            entry.evicted = True
            if entry.users == 0:
                idle.append(entry.reader)
    for reader in idle:
        reader.close()


def cached_slide_count() -> int:
    """How many handles the cache holds (for tests and monitoring)."""
    with _cache_lock:
        return len(_cache)


def _reset_cache_after_fork() -> None:
    # A forked child must not share OpenSlide handles (file offsets, caches) with its parent, nor
    # inherit a lock another thread held at fork time: start from a fresh, empty cache.
    global _cache_lock, _cache
    _cache_lock = threading.Lock()
    _cache = OrderedDict()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_cache_after_fork)
