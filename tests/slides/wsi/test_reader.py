from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidInputError, NotFoundError, SlideUnreadableError
from slides.wsi import reader as reader_module
from slides.wsi.reader import (
    SlideReader,
    cached_slide_count,
    clear_slide_cache,
    detect_format,
    open_slide,
)
from slides.wsi.synthetic import generate_slide


def test_metadata_of_an_aperio_slide(cmu_slide: Path) -> None:
    with SlideReader(cmu_slide) as reader:
        meta = reader.metadata
    assert meta.vendor == "aperio"
    assert (meta.l0_width, meta.l0_height) == (2220, 2967)
    assert meta.level_count == 1 and meta.level_dimensions == ((2220, 2967),)
    assert meta.level_downsamples == (1.0,)
    assert meta.mpp == pytest.approx(0.499)
    assert (meta.mpp_assumed, meta.mpp_source) == (False, "metadata")
    assert meta.objective_power == 20.0
    assert set(meta.associated_images) == {"label", "macro", "thumbnail"}
    assert meta.warnings == ()


def test_slide_without_resolution_is_flagged_assumed(
    tcga_slide: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="slides.wsi.reader"):
        reader = SlideReader(tcga_slide)
    meta = reader.metadata
    reader.close()
    assert meta.level_count == 2
    assert meta.level_dimensions == ((4443, 3567), (2221, 1783))
    assert (meta.mpp, meta.mpp_assumed, meta.mpp_source) == (0.5, True, "default")
    assert meta.objective_power is None
    assert len(meta.warnings) == 1 and "assuming 0.5 um/px" in meta.warnings[0]
    assert any("assuming 0.5 um/px" in record.getMessage() for record in caplog.records)
    with SlideReader(tcga_slide, default_mpp=0.25) as given:
        assert (given.metadata.mpp, given.metadata.mpp_assumed) == (0.25, True)
        assert "given default" in given.metadata.warnings[0]


def test_mpp_from_objective_power_only(tmp_path: Path) -> None:
    from slides.wsi.reader import _resolve_mpp

    mpp, assumed, source, power, warnings = _resolve_mpp(
        {"openslide.objective-power": "40"}, None, "x.svs"
    )
    assert (mpp, assumed, source, power) == (0.25, True, "objective_power", 40.0)
    assert "40x" in warnings[0]
    mpp, _, source, _, _ = _resolve_mpp(
        {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.27"}, None, "x.svs"
    )
    assert (mpp, source) == (pytest.approx(0.26), "metadata")
    with pytest.raises(InvalidInputError):
        _resolve_mpp({}, -1.0, "x.svs")


def test_detect_format_by_content(cmu_slide: Path, broken_slide: Path, tmp_path: Path) -> None:
    assert detect_format(cmu_slide) == "aperio"
    assert detect_format(broken_slide) is None
    renamed = tmp_path / "slide.bin"
    shutil.copyfile(cmu_slide, renamed)
    assert detect_format(renamed) == "aperio"
    assert detect_format(tmp_path / "missing.svs") is None


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "missing.svs", "does not exist"),
        (lambda d: d, "directory"),
        (lambda d: _write(d / "empty.svs", b""), "empty"),
        (lambda d: _write(d / "notes.svs", b"This is a text file.\n"), "not a whole-slide"),
    ],
)
def test_unreadable_files(tmp_path: Path, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(SlideUnreadableError) as info:
        SlideReader(path)
    assert reason in info.value.message
    assert path.name in info.value.message
    assert info.value.code == "slide_unreadable"


def test_broken_slide(broken_slide: Path) -> None:
    with pytest.raises(SlideUnreadableError, match=r"broken\.svs"):
        SlideReader(broken_slide)
    with pytest.raises(SlideUnreadableError), open_slide(broken_slide):
        pass
    assert cached_slide_count() == 0


def test_truncated_tiff_is_unreadable(cmu_slide: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(cmu_slide.read_bytes()[:4096])
    with (
        pytest.raises(SlideUnreadableError, match=r"truncated\.svs"),
        SlideReader(truncated) as reader,
    ):
        reader.read_patch((0, 0), 64, 0.5)


def test_non_ascii_file_name(cmu_slide: Path, tmp_path: Path) -> None:
    path = tmp_path / "Schnitt_é_ü_日本.svs"
    shutil.copyfile(cmu_slide, path)
    with SlideReader(path) as reader:
        patch = reader.read_patch((500, 500), 64, 0.5)
    assert patch.shape == (64, 64, 3)
    with open_slide(path) as cached:
        assert cached.metadata.l0_width == 2220


def test_read_patch_shape_and_content(cmu_slide: Path) -> None:
    with SlideReader(cmu_slide) as reader:
        patch = reader.read_patch((1000, 1500), 224, 0.5)
        assert (patch.shape, patch.dtype) == ((224, 224, 3), np.uint8)
        assert reader.best_level(0.5) == 0
        # 0.499 um/px serves 0.5 um/px directly: same pixels as a raw level-0 read.
        raw = reader.read_region_l0((1000, 1500), 0, (224, 224))
        np.testing.assert_array_equal(patch, raw)
        # Half the resolution: one read of 449 px reduced by two.
        coarse = reader.read_patch((1000, 1500), 112, 1.0)
        assert coarse.shape == (112, 112, 3)
        assert abs(float(coarse.mean()) - float(patch.mean())) < 4.0


def test_patch_past_the_border_is_white(cmu_slide: Path) -> None:
    with SlideReader(cmu_slide) as reader:
        outside = reader.read_patch((5000, 5000), 32, 0.5)
        assert (outside == 255).all()
        straddling = reader.read_patch((2220 - 16, 2967 - 16), 32, 0.5)
        assert (straddling[16:, :] == 255).all() and (straddling[:, 16:] == 255).all()
        negative = reader.read_patch((-16, -16), 32, 0.5)
        assert (negative[:16] == 255).all()


def test_best_level_picks_the_coarsest_fine_enough_level(tcga_slide: Path) -> None:
    with SlideReader(tcga_slide) as reader:
        assert reader.best_level(0.5) == 0
        assert reader.best_level(0.9) == 0  # level 1 is 1.0003 um/px: too coarse for 0.9
        assert reader.best_level(1.0) == 1  # within the tolerance
        assert reader.best_level(4.0) == 1
        patch = reader.read_patch((1000, 1000), 100, 2.0)
        assert patch.shape == (100, 100, 3)
        with pytest.raises(InvalidInputError):
            reader.best_level(0.0)
        with pytest.raises(InvalidInputError):
            reader.read_region_l0((0, 0), 5, (10, 10))


def test_upsampling_when_target_is_finer_than_the_slide(cmu_slide: Path) -> None:
    with SlideReader(cmu_slide) as reader:
        assert reader.read_patch((1000, 1000), 64, 0.25).shape == (64, 64, 3)


def test_thumbnail_and_associated_images(cmu_slide: Path) -> None:
    with SlideReader(cmu_slide) as reader:
        thumb = reader.thumbnail(256)
        assert max(thumb.shape[:2]) == 256 and thumb.shape[2] == 3
        assert thumb.shape[1] == round(2220 / (2967 / 256))
        assert reader.thumbnail(10_000).shape == (2967, 2220, 3)  # never upscaled
        label = reader.associated_image("label")
        assert label.shape == (463, 387, 3) and label.dtype == np.uint8
        with pytest.raises(NotFoundError, match="label, macro, thumbnail"):
            reader.associated_image("barcode")


def test_thumbnail_in_bands_matches_one_read(
    cmu_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SlideReader(cmu_slide) as reader:
        whole = reader.read_scaled(8.0).astype(np.int16)
        monkeypatch.setattr(reader_module, "MAX_READ_PIXELS", 2220 * 300)
        banded = reader.read_scaled(8.0).astype(np.int16)
    assert whole.shape == banded.shape
    assert np.abs(whole - banded).max() <= 2


def test_close_is_idempotent_and_reads_after_close_fail(cmu_slide: Path) -> None:
    reader = SlideReader(cmu_slide)
    reader.close()
    reader.close()
    assert reader.closed
    with pytest.raises(SlideUnreadableError, match="closed"):
        reader.read_patch((0, 0), 16, 0.5)


def test_open_slide_caches_handles(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as first:
        pass
    with open_slide(cmu_slide) as second:
        assert second is first
        assert not second.closed  # leaving the block did not close it
    assert cached_slide_count() == 1
    clear_slide_cache()
    assert first.closed and cached_slide_count() == 0


def test_cache_evicts_and_closes_the_least_recently_used(
    cmu_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "SLIDE_CACHE_SIZE", 2)
    paths = []
    for index in range(3):
        path = tmp_path / f"copy{index}.svs"
        shutil.copyfile(cmu_slide, path)
        paths.append(path)
    readers = []
    for path in paths:
        with open_slide(path) as reader:
            readers.append(reader)
    assert cached_slide_count() == 2
    assert readers[0].closed and not readers[1].closed and not readers[2].closed


def test_evicted_handle_in_use_is_closed_by_its_last_user(
    cmu_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "SLIDE_CACHE_SIZE", 1)
    other = tmp_path / "other.svs"
    shutil.copyfile(cmu_slide, other)
    with open_slide(cmu_slide) as busy:
        with open_slide(other):
            pass
        assert not busy.closed  # evicted while in use: still readable
        busy.read_patch((0, 0), 16, 0.5)
    assert busy.closed


def test_links_to_one_file_share_one_handle(cmu_slide: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.svs"
    link.symlink_to(cmu_slide)
    with open_slide(cmu_slide) as direct, open_slide(link) as linked:
        assert direct is linked


def test_cache_is_thread_safe(cmu_slide: Path) -> None:
    errors: list[BaseException] = []
    seen: set[int] = set()

    def work() -> None:
        try:
            for _ in range(10):
                with open_slide(cmu_slide) as reader:
                    seen.add(id(reader))
                    reader.read_patch((800, 800), 32, 0.5)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cached_slide_count() == 1 and len(seen) == 1


def test_replaced_file_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "slide.svs"
    generate_slide(path, seed=1, tumor=False, width=512, height=512)
    with open_slide(path) as first:
        assert first.metadata.l0_width == 512
    generate_slide(path, seed=1, tumor=False, width=640, height=512)
    with open_slide(path) as second:
        assert second.metadata.l0_width == 640


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
