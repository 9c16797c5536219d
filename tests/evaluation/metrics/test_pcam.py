"""PatchCamelyon: file validation, streaming, input geometry, central cells, evaluation.

The HDF5 files are built here from the real H&E tiles of ``../shared/data/tiles/crc-val-he-7k``
(224 px, downscaled to PCam's 96 px): TUM tiles are label 1, every other class label 0.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from common.errors import InvalidInputError
from evaluation.metrics.pcam import (
    CENTER_START,
    CENTER_STOP,
    central_region_cells,
    central_region_weights,
    evaluate_pcam,
    iter_pcam,
    pcam_scores,
    pcam_to_model_input,
)
from training.mil.config import RunConfig
from training.mil.model import build_model
from training.mil.presets import IMAGENET_NORMALISATION, Normalisation

# Inputs reach the model unchanged (in [0, 1]) under this normalisation.
IDENTITY = Normalisation((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two OpenMP threads contending with other jobs on the shared 2-core machine made small
    # convolutions much slower than one thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class DarknessModel(nn.Module):
    """A fake network: each cell's probability is the mean darkness of its input pixels."""

    def __init__(self, cell: int) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor) -> Tensor:
        darkness = 1.0 - x.mean(dim=1, keepdim=True)
        return torch.logit(F.avg_pool2d(darkness, self.cell).clamp(1e-6, 1 - 1e-6))


class WholePatchDarkness(nn.Module):
    """A negative control: one darkness score over the whole 192 px image, in every cell."""

    def forward(self, x: Tensor) -> Tensor:
        darkness = 1.0 - x[:, :, 16:208, 16:208].mean(dim=(1, 2, 3))
        p = darkness.clamp(1e-6, 1 - 1e-6).view(-1, 1, 1, 1).expand(-1, 1, 14, 14)
        return torch.logit(p)


def write_pcam(folder: Path, x: np.ndarray, y: np.ndarray, *, stem: str = "split") -> Path:
    """Write ``x``/``y`` as PCam does (``y`` N x 1 x 1 x 1); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{stem}_x.h5", "w") as fx:
        fx.create_dataset("x", data=x, chunks=(1, 96, 96, 3))
    with h5py.File(folder / f"{stem}_y.h5", "w") as fy:
        fy.create_dataset("y", data=np.asarray(y, np.uint8).reshape(-1, 1, 1, 1))
    return folder


def paths(folder: Path, stem: str = "split") -> tuple[Path, Path]:
    return folder / f"{stem}_x.h5", folder / f"{stem}_y.h5"


@pytest.fixture(scope="module")
def tiles(shared_data: Path) -> dict[str, list[np.ndarray]]:
    """The real CRC tiles by class, downscaled 224 -> 96 px (sorted by file name)."""
    folder = shared_data / "tiles" / "crc-val-he-7k"
    if not folder.is_dir():
        pytest.skip(f"the real tile folder {folder} is absent")
    out: dict[str, list[np.ndarray]] = {}
    for path in sorted(folder.glob("*.png")):
        image = Image.open(path).convert("RGB").resize((96, 96), Image.Resampling.LANCZOS)
        out.setdefault(path.name.split("-")[0], []).append(np.asarray(image))
    return out


@pytest.fixture(scope="module")
def crc_pcam(tiles: dict[str, list[np.ndarray]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 32 tiles, interleaved by class; TUM is label 1."""
    names = sorted(tiles)
    x, y = [], []
    for i in range(max(len(v) for v in tiles.values())):
        for name in names:
            if i < len(tiles[name]):
                x.append(tiles[name][i])
                y.append(int(name == "TUM"))
    return write_pcam(tmp_path_factory.mktemp("pcam"), np.stack(x), np.asarray(y))


# -- files and streaming --------------------------------------------------------------------


def test_streaming_in_order_by_slices(crc_pcam: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x_path, y_path = paths(crc_pcam)
    with h5py.File(x_path) as fx, h5py.File(y_path) as fy:
        all_x, all_y = fx["x"][:], fy["y"][:].reshape(-1)
    reads: list[int] = []
    original = h5py.Dataset.__getitem__

    def spy(self: h5py.Dataset, key: Any) -> Any:
        out = original(self, key)
        reads.append(int(np.asarray(out).shape[0]))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    batches = list(iter_pcam(x_path, y_path, batch_size=5))
    assert [len(b[0]) for b in batches] == [5, 5, 5, 5, 5, 5, 2]
    # Never more than one batch read from either file at once.
    assert max(reads) <= 5
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), all_x)
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(labels, all_y)
    assert labels.dtype == np.int64 and labels.sum() == 4
    assert batches[0][0].dtype == np.uint8 and batches[0][0].shape[1:] == (96, 96, 3)


def test_invalid_files(tmp_path: Path) -> None:
    good_x = np.zeros((4, 96, 96, 3), np.uint8)
    cases: dict[str, tuple[np.ndarray, np.ndarray, str]] = {
        "shape": (np.zeros((4, 64, 64, 3), np.uint8), np.zeros(4), "96 x 96 x 3"),
        "dtype": (good_x.astype(np.float32), np.zeros(4), "uint8"),
        "count": (good_x, np.zeros(3), "4 patches but"),
        "labels": (good_x, np.array([0, 1, 2, 0]), "neither 0 nor 1"),
    }
    for stem, (x, y, message) in cases.items():
        folder = tmp_path / stem
        folder.mkdir()
        with h5py.File(folder / "s_x.h5", "w") as fx:
            fx.create_dataset("x", data=x)
        with h5py.File(folder / "s_y.h5", "w") as fy:
            fy.create_dataset("y", data=y.astype(np.uint8).reshape(-1, 1, 1, 1))
        with pytest.raises(InvalidInputError, match=message):
            list(iter_pcam(*paths(folder, "s"), batch_size=2))

    folder = write_pcam(tmp_path / "ok", good_x, np.zeros(4))
    x_path, y_path = paths(folder)
    with h5py.File(tmp_path / "wrong.h5", "w") as f:
        f.create_dataset("images", data=good_x)
    with pytest.raises(InvalidInputError, match="no dataset 'x'.*images"):
        list(iter_pcam(tmp_path / "wrong.h5", y_path))
    with pytest.raises(InvalidInputError, match="no dataset 'y'"):
        list(iter_pcam(x_path, x_path))
    with pytest.raises(InvalidInputError, match="not found"):
        list(iter_pcam(tmp_path / "absent_x.h5", y_path))
    text = tmp_path / "text.h5"
    text.write_text("not hdf5", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="not an HDF5"):
        list(iter_pcam(text, y_path))
    gz = tmp_path / "x.h5.gz"
    gz.write_bytes(gzip.compress(x_path.read_bytes()))
    with pytest.raises(InvalidInputError, match="gunzip"):
        list(iter_pcam(gz, y_path))
    for bad in (0, 10**6):
        with pytest.raises(InvalidInputError, match="batch_size"):
            list(iter_pcam(x_path, y_path, batch_size=bad))
    # N and N x 1 label layouts are accepted too.
    with h5py.File(tmp_path / "flat_y.h5", "w") as fy:
        fy.create_dataset("y", data=np.array([0, 1, 1, 0], np.uint8))
    assert next(iter_pcam(x_path, tmp_path / "flat_y.h5"))[1].tolist() == [0, 1, 1, 0]


# -- geometry -------------------------------------------------------------------------------


def test_model_input_geometry() -> None:
    x = np.zeros((2, 96, 96, 3), np.uint8)
    x[0, 40, 50] = 255  # one bright pixel (row 40, col 50) in every channel
    x[1] = 255  # a white patch
    out = pcam_to_model_input(x)
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.uint8
    # Bilinear x2 (pixel-area convention): input pixel i spreads over output pixels
    # 2i - 1 .. 2i + 2 with weights 1/4, 3/4, 3/4, 1/4 per axis; then 16 px of padding.
    r, c = 16 + 2 * 40, 16 + 2 * 50
    expected = np.zeros((224, 224), np.float64)
    weights = np.array([0.25, 0.75, 0.75, 0.25])
    expected[r - 1 : r + 3, c - 1 : c + 3] = np.outer(weights, weights) * 255
    np.testing.assert_array_equal(out[0, ..., 0], np.round(expected))
    assert (out[0, ..., 0] == out[0, ..., 2]).all()
    assert out[0, r, c, 0] == round(0.5625 * 255) and out[0].argmax() // 3 == r * 224 + c
    # A white patch fills exactly [16, 208) x [16, 208); the padding is black.
    white = out[1, ..., 0]
    assert (white[16:208, 16:208] == 255).all()
    assert white[:16].max() == 0 and white[208:].max() == 0
    assert white[:, :16].max() == 0 and white[:, 208:].max() == 0
    # The labelled central 32 px of the patch, [32, 64), lands on [80, 144) of the input.
    assert (CENTER_START, CENTER_STOP) == (80, 144)
    centre = np.zeros((1, 96, 96, 3), np.uint8)
    centre[0, 32:64, 32:64] = 200
    big = pcam_to_model_input(centre)[0, ..., 0]
    assert (big[81:143, 81:143] == 200).all()
    assert big[:79].max() == 0 and big[145:].max() == 0
    with pytest.raises(InvalidInputError):
        pcam_to_model_input(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(InvalidInputError):
        pcam_to_model_input(np.zeros((1, 96, 96, 3), np.float32))


def test_central_cells_and_weights() -> None:
    # Stride 16: cells of 16 px, [80, 144) is exactly cells 5..8.
    assert central_region_cells((14, 14)) == (slice(5, 9), slice(5, 9))
    w14 = central_region_weights((14, 14))
    assert w14.sum() == pytest.approx(1.0)
    assert np.allclose(w14[5:9, 5:9], 1 / 16) and w14[5:9, 5:9].sum() == pytest.approx(1.0)
    # Stride 32: cells of 32 px; [80, 144) covers half of cell 2, cell 3, half of cell 4.
    assert central_region_cells((7, 7)) == (slice(2, 5), slice(2, 5))
    w7 = central_region_weights((7, 7))
    np.testing.assert_allclose(w7[2:5, 2:5], np.outer([0.25, 0.5, 0.25], [0.25, 0.5, 0.25]))
    assert w7.sum() == pytest.approx(1.0)
    assert central_region_cells((7, 14)) == (slice(2, 5), slice(5, 9))
    assert central_region_cells((1, 1)) == (slice(0, 1), slice(0, 1))
    with pytest.raises(InvalidInputError):
        central_region_cells((0, 7))


# -- evaluation -----------------------------------------------------------------------------


def test_evaluate_with_a_real_network(crc_pcam: Path) -> None:
    config = RunConfig(alpha=0.4, beta=0.2, arch="resnet18", pretrained="none", patch_size=224)
    torch.manual_seed(0)
    model = build_model(config)
    progress: list[tuple[int, int]] = []
    result = evaluate_pcam(
        model,
        *paths(crc_pcam),
        normalisation=IMAGENET_NORMALISATION,
        device="cpu",
        batch_size=8,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert math.isfinite(result["auc"]) and 0.0 <= result["auc"] <= 1.0
    assert (result["n"], result["n_pos"], result["n_neg"]) == (32, 4, 28)
    assert result["map_hw"] == [7, 7]
    assert progress == [(8, 32), (16, 32), (24, 32), (32, 32)]
    assert model.training  # restored


def test_darkness_separates_tumor_from_fat_and_mucus(
    tiles: dict[str, list[np.ndarray]], tmp_path: Path
) -> None:
    # TUM tiles are dense and dark; ADI (fat) and MUC (mucus) are pale: a model seeing darkness
    # must rank TUM first if labels, order and scoring are wired correctly.
    x = np.stack(tiles["ADI"] + tiles["TUM"] + tiles["MUC"])
    y = np.array([0] * 4 + [1] * 4 + [0] * 4)
    folder = write_pcam(tmp_path, x, y)
    for cell in (16, 32):
        result = evaluate_pcam(
            DarknessModel(cell), *paths(folder), normalisation=IDENTITY, device="cpu", batch_size=5
        )
        assert result["auc"] > 0.9, result
        assert result["mean_score_pos"] > result["mean_score_neg"]


def test_only_the_central_region_counts(tiles: dict[str, list[np.ndarray]], tmp_path: Path) -> None:
    # Label 1: a pale (ADI) patch with a TUM centre; label 0: a TUM patch with a pale centre.
    # Scored on the central cells, darkness ranks every label-1 patch first; scored on the
    # whole patch it would rank them last.
    x, y = [], []
    for tum in tiles["TUM"]:
        for pale in tiles["ADI"]:
            positive = pale.copy()
            positive[32:64, 32:64] = tum[32:64, 32:64]
            negative = tum.copy()
            negative[32:64, 32:64] = pale[32:64, 32:64]
            x += [positive, negative]
            y += [1, 0]
    folder = write_pcam(tmp_path, np.stack(x), np.asarray(y))
    central = evaluate_pcam(
        DarknessModel(16), *paths(folder), normalisation=IDENTITY, device="cpu", batch_size=16
    )
    assert central["map_hw"] == [14, 14] and central["auc"] == 1.0
    control = evaluate_pcam(
        WholePatchDarkness(), *paths(folder), normalisation=IDENTITY, device="cpu", batch_size=16
    )
    assert control["auc"] < 0.1
    scores, labels = pcam_scores(
        DarknessModel(16), *paths(folder), normalisation=IDENTITY, device="cpu", batch_size=7
    )
    assert labels.tolist() == y and scores.shape == (32,)
    # The score is the mean darkness of the central 64 px of the input (up to the bilinear
    # blend of its one-pixel border with the outside).
    inputs = pcam_to_model_input(np.stack(x)).astype(np.float64) / 255
    expected = 1 - inputs[:, 80:144, 80:144].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_single_class_gives_nan(crc_pcam: Path, tmp_path: Path) -> None:
    folder = write_pcam(tmp_path, np.zeros((3, 96, 96, 3), np.uint8), np.zeros(3))
    result = evaluate_pcam(DarknessModel(16), *paths(folder), normalisation=IDENTITY, device="cpu")
    assert math.isnan(result["auc"]) and result["n_pos"] == 0 and result["n"] == 3
    with pytest.raises(InvalidInputError, match="logits"):
        evaluate_pcam(
            nn.Flatten(), *paths(crc_pcam), normalisation=IDENTITY, device="cpu", batch_size=4
        )
