"""DeepZoom: the descriptor, tiles decoded at their size, errors, caching."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from PIL import Image

from slides.models import Slide, SlideState
from slides.tiles import TILE_OVERLAP, TILE_SIZE, tile_cache

DZI_NS = "{http://schemas.microsoft.com/deepzoom/2008}"


@pytest.fixture(autouse=True)
def _empty_tile_cache() -> None:
    tile_cache.clear()


def test_dzi_describes_the_slide(world: Any) -> None:
    cmu = world.objects["cmu"]
    response = world.client("viewer").get(f"/api/slides/{cmu.pk}.dzi")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/xml"
    assert response["Cache-Control"].startswith("private, max-age=")
    root = ET.fromstring(response.content)
    assert root.tag == f"{DZI_NS}Image"
    assert root.attrib["TileSize"] == str(TILE_SIZE)
    assert root.attrib["Overlap"] == str(TILE_OVERLAP)
    assert root.attrib["Format"] == "jpeg"
    size = root.find(f"{DZI_NS}Size")
    assert size is not None
    assert (size.attrib["Width"], size.attrib["Height"]) == ("2220", "2967")


@pytest.mark.parametrize(
    ("level", "col", "row", "size"),
    [
        (12, 0, 0, (TILE_SIZE + 1, TILE_SIZE + 1)),  # full resolution: overlap right, bottom
        (12, 8, 11, (2220 - 8 * TILE_SIZE + 1, 2967 - 11 * TILE_SIZE + 1)),  # last corner
        (12, 3, 4, (TILE_SIZE + 2, TILE_SIZE + 2)),  # inner tile: overlap on every side
        (0, 0, 0, (1, 1)),  # the whole slide in one pixel
        (8, 0, 0, (139, 186)),  # 1/16: ceil(2220 / 16) x ceil(2967 / 16), a single tile
    ],
)
def test_tile_decodes_at_its_size(world: Any, level: int, col: int, row: int,
                                  size: tuple[int, int]) -> None:  # fmt: skip
    cmu = world.objects["cmu"]
    response = world.client("viewer").get(f"/api/slides/{cmu.pk}_files/{level}/{col}_{row}.jpeg")
    assert response.status_code == 200, response.content[:200]
    assert response["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == size


def test_second_request_is_served_from_the_cache(world: Any) -> None:
    cmu = world.objects["cmu"]
    client = world.client("viewer")
    url = f"/api/slides/{cmu.pk}_files/11/1_2.jpeg"
    first = client.get(url)
    before = tile_cache.stats()
    second = client.get(url)
    after = tile_cache.stats()
    assert first.status_code == second.status_code == 200
    assert first["X-Tile-Cache"] == "miss"
    assert second["X-Tile-Cache"] == "hit"
    assert after.hits == before.hits + 1
    assert after.misses == before.misses
    assert second.content == first.content
    assert "max-age=" in second["Cache-Control"] and "private" in second["Cache-Control"]


def test_cache_is_bounded_in_bytes() -> None:
    from slides.tiles import TileCache

    cache = TileCache(max_bytes=100)
    for k in range(10):
        cache.put(k, bytes(30))
    stats = cache.stats()
    assert stats.bytes <= 100 and stats.entries == 3
    assert cache.get(0) is None and cache.get(9) is not None


@pytest.mark.parametrize(
    "address",
    ["13/0_0", "99/0_0", "12/9_0", "12/0_12", "11/5_0", "0/1_0", "12/100000_100000"],
)
def test_bad_level_or_address_is_404(world: Any, address: str, error_shape: Any) -> None:
    cmu = world.objects["cmu"]
    response = world.client("viewer").get(f"/api/slides/{cmu.pk}_files/{address}.jpeg")
    assert response.status_code == 404
    error_shape(response)


def test_malformed_tile_paths_are_404_in_the_error_shape(world: Any, error_shape: Any) -> None:
    cmu = world.objects["cmu"]
    client = world.client("viewer")
    for path in (f"{cmu.pk}_files/-1/0_0.jpeg", f"{cmu.pk}_files/1/0-0.jpeg",
                 f"{cmu.pk}_files/1/0_0.png", "999999.dzi"):  # fmt: skip
        response = client.get(f"/api/slides/{path}")
        assert response.status_code == 404, path
        error_shape(response)


def test_a_slide_without_a_readable_file_is_409(world: Any, error_shape: Any) -> None:
    pending = Slide.objects.create(
        cohort=world.alpha, original_filename="awaiting.svs", state=SlideState.AWAITING_FILE
    )
    client = world.client("viewer")
    for path in (f"{pending.pk}.dzi", f"{pending.pk}_files/0/0_0.jpeg", f"{pending.pk}/thumbnail"):
        response = client.get(f"/api/slides/{path}")
        assert response.status_code == 409, path
        error_shape(response)
        assert response.json()["code"] == "slide_not_ready"


def test_image_only_accept_header_still_gets_the_tile(world: Any) -> None:
    cmu = world.objects["cmu"]
    response = world.client("viewer").get(
        f"/api/slides/{cmu.pk}_files/12/0_0.jpeg", HTTP_ACCEPT="image/avif,image/webp"
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"


def test_thumbnail_mask_and_associated_images(world: Any, error_shape: Any) -> None:
    cmu = world.objects["cmu"]
    client = world.client("viewer")
    thumb = Image.open(io.BytesIO(client.get(f"/api/slides/{cmu.pk}/thumbnail").content))
    assert max(thumb.size) <= 1024 and thumb.format == "JPEG"
    mask = Image.open(io.BytesIO(client.get(f"/api/slides/{cmu.pk}/tissue-mask").content))
    assert mask.format == "PNG"
    for name in ("label", "macro", "thumbnail"):
        response = client.get(f"/api/slides/{cmu.pk}/associated/{name}")
        assert response.status_code == 200 and response["Content-Type"] == "image/png"
    missing = client.get(f"/api/slides/{cmu.pk}/associated/nope")
    assert missing.status_code == 404
    error_shape(missing)
