"""PatchCamelyon (PCam) evaluation of a trained fully convolutional model.

PCam's files (``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``, once gunzipped) hold
96 x 96 RGB patches of lymph-node sections (dataset ``x``, N x 96 x 96 x 3 uint8) and their
labels (dataset ``y``, N x 1 x 1 x 1 uint8): 1 when the CENTRAL 32 x 32 pixels contain tumor.

As in the paper, a patch becomes model input by bilinear upsampling x2 (96 -> 192 px, i.e.
PCam's ~0.97 um/px brought to ~0.5 um/px, the training resolution) and zero padding to 224 px
(16 black pixels on each side; zeros in uint8, i.e. black, before standardisation). The central
32 x 32 px of the original patch is then the 64 x 64 px square ``[80, 144)`` of the input.

Score of a patch: the mean tumor probability over the map cells covering that square, each cell
weighted by the fraction of its area inside the square (cell ``i`` of an ``h``-cell map covers
input pixels ``[i * 224 / h, (i + 1) * 224 / h)``, as whole-slide stitching assumes). At output
stride 16 (14 x 14 map) this is the plain mean of the 4 x 4 cells 5..8, which tile the square
exactly; at stride 32 (7 x 7) the 3 x 3 cells 2..4 have weights (1/4, 1/2, 1/4) per axis.

AUC: ``sklearn.metrics.roc_auc_score`` on the float64 scores (32,768 test patches are too few
for speed to matter, and float scores avoid the ties of uint8 quantisation).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from common.errors import InvalidInputError
from training.mil.device import autocast, resolve_device, uses_channels_last
from training.mil.presets import Normalisation, prepare_batch

# PCam's patch side, and the side of the region its label describes.
PCAM_SIZE = 96
PCAM_CENTER = 32
# 96 px at ~0.97 um/px upsampled x2 reaches the ~0.5 um/px the model was trained at.
UPSAMPLE = 2
# The paper's model input: 2 x 96 = 192 px, zero-padded to the ImageNet-size 224 px.
INPUT_SIZE = 224
PAD = (INPUT_SIZE - UPSAMPLE * PCAM_SIZE) // 2  # 16 px each side
# The central region in model-input pixels: [80, 144).
CENTER_START = PAD + UPSAMPLE * (PCAM_SIZE - PCAM_CENTER) // 2
CENTER_STOP = CENTER_START + UPSAMPLE * PCAM_CENTER
# Patches per batch: 256 x 224 px is 38 MB of uint8 input, a good GPU batch for ResNet50.
DEFAULT_BATCH_SIZE = 256
# A batch larger than this would not fit a GPU with ResNet50 activations; refused early.
MAX_BATCH_SIZE = 4096
# PCam's official split files hold 262,144 / 32,768 / 32,768 patches; allow larger custom sets
# but refuse a file claiming more, which would be a mistaken dataset.
MAX_PATCHES = 1 << 24
GZIP_MAGIC = b"\x1f\x8b"


# -- files ------------------------------------------------------------------------------------


def _open_h5(path: Path, what: str) -> h5py.File:
    if not path.is_file():
        raise InvalidInputError(
            f"PCam {what} file not found: {path}", details={"path": str(path), "file": what}
        )
    with path.open("rb") as handle:
        head = handle.read(2)
    if head == GZIP_MAGIC:
        raise InvalidInputError(
            f"{path.name!r} is gzip-compressed, as PCam is distributed: gunzip it first",
            details={"path": str(path), "file": what},
        )
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InvalidInputError(
            f"{path.name!r} is not an HDF5 file ({exc})", details={"path": str(path), "file": what}
        ) from exc


def _dataset(handle: h5py.File, name: str, path: Path) -> h5py.Dataset:
    item = handle.get(name)
    if not isinstance(item, h5py.Dataset):
        found = ", ".join(sorted(handle.keys())) or "nothing"
        raise InvalidInputError(
            f"{path.name!r} has no dataset {name!r} (it holds: {found}); PCam's x files hold "
            f"'x' and its y files 'y'",
            details={"path": str(path), "dataset": name},
        )
    return item


def _check_datasets(x: h5py.Dataset, y: h5py.Dataset, x_path: Path, y_path: Path) -> int:
    """Validate PCam's layout; returns N."""
    expected_x = (PCAM_SIZE, PCAM_SIZE, 3)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected_x or x.dtype != np.uint8:
        raise InvalidInputError(
            f"{x_path.name!r}: dataset 'x' must be N x 96 x 96 x 3 uint8, got "
            f"{tuple(x.shape)} {x.dtype}",
            details={"path": str(x_path), "shape": list(x.shape), "dtype": str(x.dtype)},
        )
    # Official labels are N x 1 x 1 x 1; N and N x 1 are accepted too.
    if y.ndim < 1 or any(int(d) != 1 for d in y.shape[1:]) or y.dtype.kind not in "uib":
        raise InvalidInputError(
            f"{y_path.name!r}: dataset 'y' must be N x 1 x 1 x 1 integer labels, got "
            f"{tuple(y.shape)} {y.dtype}",
            details={"path": str(y_path), "shape": list(y.shape), "dtype": str(y.dtype)},
        )
    n = int(x.shape[0])
    if int(y.shape[0]) != n:
        raise InvalidInputError(
            f"{x_path.name!r} holds {n} patches but {y_path.name!r} {int(y.shape[0])} labels",
            details={"n_x": n, "n_y": int(y.shape[0])},
        )
    if n == 0:
        raise InvalidInputError(f"{x_path.name!r} holds no patch", details={"path": str(x_path)})
    if n > MAX_PATCHES:
        raise InvalidInputError(
            f"{x_path.name!r} claims {n} patches, more than {MAX_PATCHES}",
            details={"path": str(x_path)},
        )
    return n


def _check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidInputError(
            f"batch_size must be in [1, {MAX_BATCH_SIZE}], got {batch_size}",
            details={"field": "batch_size"},
        )


def pcam_size(x_path: str | os.PathLike[str], y_path: str | os.PathLike[str]) -> int:
    """The number of patches of a validated pair of PCam files."""
    xp, yp = Path(os.fspath(x_path)), Path(os.fspath(y_path))
    with _open_h5(xp, "x") as fx, _open_h5(yp, "y") as fy:
        return _check_datasets(_dataset(fx, "x", xp), _dataset(fy, "y", yp), xp, yp)


def iter_pcam(
    x_path: str | os.PathLike[str],
    y_path: str | os.PathLike[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream ``(x uint8 (B, 96, 96, 3), y int64 (B,))`` batches in file order.

    Reads one slice of each dataset per batch (never the whole file). Raises
    InvalidInputError for a missing, gzip-compressed or non-HDF5 file, a missing dataset, a
    wrong shape or dtype, differing patch and label counts, or a label other than 0/1.
    """
    _check_batch_size(batch_size)
    xp, yp = Path(os.fspath(x_path)), Path(os.fspath(y_path))
    with _open_h5(xp, "x") as fx, _open_h5(yp, "y") as fy:
        x, y = _dataset(fx, "x", xp), _dataset(fy, "y", yp)
        n = _check_datasets(x, y, xp, yp)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            patches = np.asarray(x[start:stop])
            labels = np.asarray(y[start:stop]).reshape(stop - start).astype(np.int64)
            bad = (labels != 0) & (labels != 1)
            if bad.any():
                first = start + int(np.argmax(bad))
                raise InvalidInputError(
                    f"{yp.name!r}: label {int(labels[first - start])} at index {first} is "
                    f"neither 0 nor 1",
                    details={"path": str(yp), "index": first},
                )
            yield patches, labels


# -- geometry ---------------------------------------------------------------------------------


def _upsample_pad(x: Tensor) -> Tensor:
    """uint8 (B, 96, 96, 3) -> uint8 (B, 224, 224, 3) on x's device (see the module doc)."""
    nchw = x.permute(0, 3, 1, 2).float()
    # align_corners=False: output pixel o samples input (o + 0.5) / 2 - 0.5, the usual
    # pixel-area convention (PIL's and OpenCV's bilinear agree); borders replicate.
    big = F.interpolate(nchw, scale_factor=UPSAMPLE, mode="bilinear", align_corners=False)
    big = F.pad(big, (PAD, PAD, PAD, PAD), value=0.0)
    return big.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def pcam_to_model_input(x: np.ndarray) -> np.ndarray:
    """PCam patches uint8 (B, 96, 96, 3) -> model input uint8 (B, 224, 224, 3): bilinear x2
    upsampling to 192 px, then 16 px of zeros (black) on every side."""
    array = np.asarray(x)
    if array.ndim != 4 or tuple(array.shape[1:]) != (PCAM_SIZE, PCAM_SIZE, 3):
        raise InvalidInputError(f"PCam patches must be (B, 96, 96, 3), got {array.shape}")
    if array.dtype != np.uint8:
        raise InvalidInputError(f"PCam patches must be uint8, got {array.dtype}")
    out: np.ndarray = _upsample_pad(torch.from_numpy(np.ascontiguousarray(array))).numpy()
    return out


def _axis_weights(cells: int) -> np.ndarray:
    """Per-cell overlap (fraction of the central span) along one axis of an ``cells`` map."""
    edges = np.arange(cells + 1, dtype=np.float64) * (INPUT_SIZE / cells)
    overlap = np.clip(
        np.minimum(edges[1:], CENTER_STOP) - np.maximum(edges[:-1], CENTER_START), 0.0, None
    )
    weights: np.ndarray = overlap / overlap.sum()
    return weights


def central_region_cells(map_hw: tuple[int, int]) -> tuple[slice, slice]:
    """``(rows, cols)`` slices of the cells of an ``h x w`` map (of a 224 px input) that cover
    the central 32 x 32 px of the PCam patch (input pixels ``[80, 144)``).

    A cell ``i`` covers input pixels ``[i * 224 / h, (i + 1) * 224 / h)``; the slices take
    every cell overlapping the central square: cells 5..8 of 14, 2..4 of 7.
    """
    h, w = int(map_hw[0]), int(map_hw[1])
    if h <= 0 or w <= 0:
        raise InvalidInputError(f"map shape must be positive, got {map_hw}")
    spans = []
    for cells in (h, w):
        nonzero = np.flatnonzero(_axis_weights(cells) > 0)
        spans.append(slice(int(nonzero[0]), int(nonzero[-1]) + 1))
    return spans[0], spans[1]


def central_region_weights(map_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) float64 weights summing to 1: each cell's share of the central square."""
    h, w = int(map_hw[0]), int(map_hw[1])
    if h <= 0 or w <= 0:
        raise InvalidInputError(f"map shape must be positive, got {map_hw}")
    weights: np.ndarray = np.outer(_axis_weights(h), _axis_weights(w))
    return weights


# -- evaluation -------------------------------------------------------------------------------


def pcam_scores(
    model: nn.Module,
    x_path: str | os.PathLike[str],
    y_path: str | os.PathLike[str],
    *,
    normalisation: Normalisation,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    amp: bool = True,
    channels_last: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores float64 (N,), labels int64 (N,))`` in file order; see the module docstring
    for the score. ``amp``/``channels_last`` apply on CUDA only (as in training).
    ``on_progress(done, total)`` is called after every batch. The model's training mode is
    restored afterwards."""
    scores, labels, _ = _score_pcam(
        model,
        x_path,
        y_path,
        normalisation=normalisation,
        device=device,
        batch_size=batch_size,
        amp=amp,
        channels_last=channels_last,
        on_progress=on_progress,
    )
    return scores, labels


def _score_pcam(
    model: nn.Module,
    x_path: str | os.PathLike[str],
    y_path: str | os.PathLike[str],
    *,
    normalisation: Normalisation,
    device: str | torch.device,
    batch_size: int,
    amp: bool,
    channels_last: bool,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """:func:`pcam_scores` plus the model's (h, w) map shape per patch."""
    _check_batch_size(batch_size)
    dev = resolve_device(device)
    total = pcam_size(x_path, y_path)
    use_channels_last = uses_channels_last(dev, channels_last)
    was_training = model.training
    model.to(dev)
    if use_channels_last:
        model.to(memory_format=torch.channels_last)
    model.eval()
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    weights: Tensor | None = None
    map_hw = (0, 0)
    done = 0
    try:
        with torch.inference_mode():
            for patches, batch_labels in iter_pcam(x_path, y_path, batch_size=batch_size):
                # Upsampled on the device: 5.4x fewer bytes cross the bus than 224 px patches.
                small = torch.from_numpy(patches).to(dev, non_blocking=True)
                x = prepare_batch(
                    _upsample_pad(small),
                    device=dev,
                    normalisation=normalisation,
                    channels_last=use_channels_last,
                )
                with autocast(dev, amp):
                    logits = model(x)
                if logits.dim() != 4 or tuple(logits.shape[:2]) != (len(patches), 1):
                    raise InvalidInputError(
                        f"the model must return (N, 1, h, w) logits, got {tuple(logits.shape)}"
                    )
                probs = torch.sigmoid(logits.float())[:, 0].double()
                if weights is None:
                    map_hw = (int(probs.shape[1]), int(probs.shape[2]))
                    weights = torch.from_numpy(central_region_weights(map_hw)).to(dev)
                scores.append((probs * weights).sum(dim=(1, 2)).cpu().numpy())
                labels.append(batch_labels)
                done += len(patches)
                if on_progress is not None:
                    on_progress(done, total)
    finally:
        model.train(was_training)
    return np.concatenate(scores), np.concatenate(labels), map_hw


def evaluate_pcam(
    model: nn.Module,
    x_path: str | os.PathLike[str],
    y_path: str | os.PathLike[str],
    *,
    normalisation: Normalisation,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    amp: bool = True,
    channels_last: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """ROC AUC of ``model`` on a PCam split (``x_path``/``y_path``, gunzipped HDF5).

    Returns ``auc`` (sklearn's ``roc_auc_score`` on float scores; NaN when only one class is
    present), ``n``, ``n_pos``, ``n_neg``, ``mean_score_pos``, ``mean_score_neg``, ``map_hw``
    (the model's map per patch), ``score`` (how a patch is scored) and ``seconds``. Patches
    are scored as :func:`pcam_scores` does.
    """
    started = time.perf_counter()
    scores, labels, map_hw = _score_pcam(
        model,
        x_path,
        y_path,
        normalisation=normalisation,
        device=device,
        batch_size=batch_size,
        amp=amp,
        channels_last=channels_last,
        on_progress=on_progress,
    )
    positives = labels == 1
    n_pos = int(positives.sum())
    n_neg = int(labels.size - n_pos)
    auc = float(roc_auc_score(labels, scores)) if n_pos and n_neg else math.nan
    return {
        "auc": auc,
        "n": int(labels.size),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "mean_score_pos": float(scores[positives].mean()) if n_pos else math.nan,
        "mean_score_neg": float(scores[~positives].mean()) if n_neg else math.nan,
        "map_hw": [map_hw[0], map_hw[1]],
        "score": "overlap-weighted mean probability of the map cells covering the central 32 px",
        "seconds": time.perf_counter() - started,
    }
