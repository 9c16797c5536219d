"""Level 0 of a tiled JPEG TIFF read by decoding each tile once, without OpenSlide.

OpenSlide decodes every JPEG tile a region overlaps on every ``read_region`` call, then converts
the result to premultiplied ARGB and back. A grid of 224 px patches over 256 px tiles thus
decodes each tile up to four times, and the conversions cost as much again: ~470 patches/s per
core at 20x. Decoding the tiles a batch needs once (libjpeg-turbo through tifffile and
imagecodecs, which release the GIL) and cutting patches out of them reads the same pixels
several times faster. Pixels are identical to OpenSlide's: the same libjpeg-turbo decodes the
same streams (Aperio's shared JPEG tables and RGB-coded tiles included), regions beyond the
image are white as OpenSlide's transparent pixels composited on white, and a missing tile
(no bytes) is white as well.

Only what is known to match is taken: Aperio SVS and generic tiled TIFF whose first page is
level 0, JPEG compressed, 8-bit RGB/YCbCr, chunky. Anything else (JPEG 2000, other vendors'
formats, strips) returns ``None`` from :meth:`JpegTiles.open`, and the caller reads through
OpenSlide.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

# OpenSlide vendors whose level 0 is the TIFF's first page, stored as plain tiles.
SUPPORTED_VENDORS = frozenset({"aperio", "generic-tiff"})
JPEG = 7
# Decoded tiles kept per process, all slides together: a batch of 128 grid patches touches
# ~100-250 tiles of 256 px (192 KiB each), a bag of 150 random patches ~500. One budget per
# process rather than per slide: a loader worker keeps dozens of slides open, and a budget per
# slide would let it hold gigabytes.
CACHE_BYTES = 128 * 1024**2
WHITE = 255


class _TileCache:
    """A process-wide LRU of decoded tiles keyed by (slide instance, tile index)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self.lock:
            tile = self.tiles.get(key)
            if tile is not None:
                self.tiles.move_to_end(key)
            return tile

    def put(self, key: tuple[int, int], tile: np.ndarray) -> None:
        with self.lock:
            if key in self.tiles:
                return
            self.tiles[key] = tile
            self.bytes += tile.nbytes
            while self.bytes > self.capacity and len(self.tiles) > 1:
                _, old = self.tiles.popitem(last=False)
                self.bytes -= old.nbytes

    def drop(self, owner: int) -> None:
        with self.lock:
            for key in [key for key in self.tiles if key[0] == owner]:
                self.bytes -= self.tiles.pop(key).nbytes


_cache = _TileCache(CACHE_BYTES)
_owners = itertools.count()


def _fresh_cache_after_fork() -> None:
    # The parent's tiles belong to its own slide instances, and its lock may have been held by
    # another thread at fork time: the child starts empty.
    global _cache
    _cache = _TileCache(CACHE_BYTES)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_cache_after_fork)


class JpegTiles:
    """Level 0 of one slide as JPEG tiles; thread-safe, one instance per process."""

    def __init__(self, tif: tifffile.TiffFile, path: Path) -> None:
        page = tif.pages.first
        self._tif = tif
        self.path = path
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        self.tile_width = int(page.tilewidth)
        self.tile_height = int(page.tilelength)
        self.tiles_across = -(-self.width // self.tile_width)
        self._offsets = tuple(int(o) for o in page.dataoffsets)
        self._counts = tuple(int(c) for c in page.databytecounts)
        self._tables: bytes | None = page.jpegtables
        self._decode: Callable[..., Any] = page.decode
        self._fd = os.open(path, os.O_RDONLY)
        # Unique per instance: a file replaced on disk and reopened never meets stale tiles.
        self._owner = next(_owners)
        self.decoded = 0  # tiles decoded so far (for tests and benchmarks)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, vendor: str | None, size: tuple[int, int]
    ) -> JpegTiles | None:
        """The slide's level 0 as JPEG tiles, or None when it is not stored that way."""
        if vendor not in SUPPORTED_VENDORS:
            return None
        file = Path(os.fspath(path))
        try:
            tif = tifffile.TiffFile(file)
        except Exception:  # any failure means "not for this reader"
            return None
        try:
            page = tif.pages.first
            tiles = -(-int(page.imagewidth) // max(int(page.tilewidth), 1)) * -(
                -int(page.imagelength) // max(int(page.tilelength), 1)
            )
            usable = (
                page.is_tiled
                and int(page.compression) == JPEG
                and int(page.planarconfig) == 1  # chunky: one segment per tile
                and int(page.samplesperpixel) == 3
                and int(page.bitspersample) == 8
                and int(page.imagedepth) == 1
                and (int(page.imagewidth), int(page.imagelength)) == size
                and len(page.dataoffsets) == tiles
            )
        except Exception:  # any doubt means "read through OpenSlide"
            usable = False
        if not usable:
            tif.close()
            return None
        return cls(tif, file)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        self._tif.close()
        _cache.drop(self._owner)

    # -- reading ---------------------------------------------------------------------------

    def read_into(self, out: np.ndarray, x: int, y: int) -> None:
        """Fill ``out`` (h, w, 3) uint8 with level 0 from top-left ``(x, y)``; white outside."""
        h, w = int(out.shape[0]), int(out.shape[1])
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x0 >= x1 or y0 >= y1:
            out.fill(WHITE)
            return
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            out.fill(WHITE)  # part of the region lies beyond the image
        tw, th = self.tile_width, self.tile_height
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            ry0, ry1 = max(y0, ty * th), min(y1, (ty + 1) * th)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                rx0, rx1 = max(x0, tx * tw), min(x1, (tx + 1) * tw)
                tile = self._tile(ty * self.tiles_across + tx)
                out[ry0 - y : ry1 - y, rx0 - x : rx1 - x] = tile[
                    ry0 - ty * th : ry1 - ty * th, rx0 - tx * tw : rx1 - tx * tw
                ]

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """A (h, w, 3) uint8 RGB region of level 0 from top-left ``(x, y)``; white outside."""
        out = np.empty((h, w, 3), dtype=np.uint8)
        self.read_into(out, x, y)
        return out

    def _tile(self, index: int) -> np.ndarray:
        key = (self._owner, index)
        tile = _cache.get(key)
        if tile is None:
            # Decoded outside the lock, so that threads decode in parallel (libjpeg-turbo
            # releases the GIL); two threads may rarely decode the same tile, harmlessly.
            tile = self._decode_tile(index)
            _cache.put(key, tile)
        return tile

    def _decode_tile(self, index: int) -> np.ndarray:
        count = self._counts[index]
        shape = (self.tile_height, self.tile_width, 3)
        if count == 0:  # a tile the scanner never wrote: transparent in OpenSlide, white here
            return np.full(shape, WHITE, dtype=np.uint8)
        # pread: no shared file offset, so threads read concurrently without a lock.
        data = os.pread(self._fd, count, self._offsets[index])
        if len(data) != count:
            raise OSError(f"tile {index} is truncated ({len(data)} of {count} bytes)")
        segment, _indices, _shape = self._decode(data, index, jpegtables=self._tables)
        tile = np.asarray(segment).reshape(segment.shape[-3:])[..., :3]
        if tile.shape != shape:
            raise OSError(f"tile {index} decoded to {tile.shape}, expected {shape}")
        self.decoded += 1
        return np.ascontiguousarray(tile)
