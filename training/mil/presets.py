"""Patch preprocessing: uint8 -> float conversion, augmentation and standardisation.

Everything works on whole batches of tensors on the target device, so on a GPU the colour work
runs there rather than in the loader processes. Random parameters are drawn on the CPU from a
seeded ``torch.Generator`` (a few numbers per patch) and then moved to the device: the same
seed gives the same augmentation on every device.

Standardisation statistics are in [0, 1] units (pixel / 255), per RGB channel, measured on
training patches by :func:`compute_normalisation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from training.mil.config import RunConfig

# Standard deviations below this are treated as this: a constant channel (e.g. a blank test
# image) must not turn standardisation into a division by zero.
MIN_STD = 1e-3
# Rec. 601 luma weights, as torchvision's rgb_to_grayscale uses.
LUMA = (0.299, 0.587, 0.114)


class Normalisation(NamedTuple):
    """Per-channel (R, G, B) mean and standard deviation, in [0, 1] units."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-safe form, as stored in checkpoints and on the run row."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalisation:
        """Inverse of ``to_dict``."""
        mean = tuple(float(v) for v in data["mean"])
        std = tuple(float(v) for v in data["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"normalisation needs 3 means and 3 stds, got {data!r}")
        return cls((mean[0], mean[1], mean[2]), (std[0], std[1], std[2]))


# Used where no training statistics exist (e.g. a benchmark on random input).
IMAGENET_NORMALISATION = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def compute_normalisation(patch_batches: Iterable[np.ndarray]) -> Normalisation:
    """Per-channel mean and std of uint8 RGB patches, (B, S, S, 3) arrays, in [0, 1] units.

    Accumulates in float64 over every pixel of every batch (population std). Raises ValueError
    if no pixel was seen or a batch is not (B, S, S, 3).
    """
    total = np.zeros(3, dtype=np.float64)
    total_sq = np.zeros(3, dtype=np.float64)
    count = 0
    for batch in patch_batches:
        array = np.asarray(batch)
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"patch batches must be (B, S, S, 3), got shape {array.shape}")
        pixels = array.reshape(-1, 3).astype(np.float64) / 255.0
        total += pixels.sum(axis=0)
        total_sq += np.square(pixels).sum(axis=0)
        count += pixels.shape[0]
    if count == 0:
        raise ValueError("cannot measure normalisation statistics on zero patches")
    mean = total / count
    var = np.maximum(total_sq / count - np.square(mean), 0.0)
    std = np.maximum(np.sqrt(var), MIN_STD)
    return Normalisation(
        (float(mean[0]), float(mean[1]), float(mean[2])),
        (float(std[0]), float(std[1]), float(std[2])),
    )


def to_float_nchw(
    patches: np.ndarray | Tensor,
    device: torch.device | str | None = None,
    *,
    channels_last: bool = False,
) -> Tensor:
    """uint8 (B, S, S, 3) patches -> float32 (B, 3, S, S) in [0, 1] on ``device``.

    The uint8 tensor is moved first (4x fewer bytes over the bus) and converted there.
    """
    tensor = (
        torch.from_numpy(np.ascontiguousarray(patches))
        if isinstance(patches, np.ndarray)
        else patches
    )
    if tensor.dim() != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"patches must be (B, S, S, 3), got shape {tuple(tensor.shape)}")
    if device is not None:
        tensor = tensor.to(device, non_blocking=True)
    # Permuting NHWC memory gives a channels-last NCHW view for free.
    x = tensor.permute(0, 3, 1, 2).float().div_(255.0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory_format)


def standardise(x: Tensor, normalisation: Normalisation) -> Tensor:
    """(x - mean) / std per channel of an (N, 3, H, W) float tensor."""
    mean = torch.tensor(normalisation.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(normalisation.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def eval_transform(x: Tensor, normalisation: Normalisation) -> Tensor:
    """The evaluation/inference transform: standardisation only."""
    return standardise(x, normalisation)


@dataclass(frozen=True)
class AugmentSettings:
    """Augmentation strengths; jitter factors are drawn uniformly in [1 - s, 1 + s]."""

    rot90: bool = True
    flips: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02  # fraction of a full turn of the hue circle, drawn in [-hue, hue]

    @classmethod
    def from_config(cls, config: RunConfig) -> AugmentSettings:
        """The settings stored in a run configuration."""
        return cls(
            rot90=config.aug_rot90,
            flips=config.aug_flips,
            brightness=config.jitter_brightness,
            contrast=config.jitter_contrast,
            saturation=config.jitter_saturation,
            hue=config.jitter_hue,
        )


def augment(x: Tensor, settings: AugmentSettings, generator: torch.Generator) -> Tensor:
    """Random dihedral transform and colour jitter, independently per patch.

    ``x``: float (N, 3, S, S) in [0, 1] (square patches); the result stays in [0, 1].
    ``generator``: a CPU generator; the same state gives the same result on any device.
    """
    n = x.shape[0]
    if n == 0:
        return x
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"patches must be square, got {tuple(x.shape[-2:])}")
    # Draw every random number up front in a fixed order so the stream does not depend on
    # which augmentations are enabled further down.
    draws = torch.rand(n, 7, generator=generator).to(x.device)

    def per_patch(column: int) -> Tensor:
        return draws[:, column].view(n, 1, 1, 1)

    if settings.rot90:
        # A transpose plus an optional flip of each axis covers all 8 rotations/reflections;
        # without ``flips`` only the 4 rotations are used (transpose+flip = rotation).
        rot = (draws[:, 0] * 4).floor().clamp_max(3)
        transpose = ((rot == 1) | (rot == 3)).view(n, 1, 1, 1)
        flip_w = ((rot == 1) | (rot == 2)).view(n, 1, 1, 1)
        flip_h = ((rot == 2) | (rot == 3)).view(n, 1, 1, 1)
        x = torch.where(transpose, x.transpose(-1, -2), x)
        x = torch.where(flip_h, x.flip(-2), x)
        x = torch.where(flip_w, x.flip(-1), x)
    if settings.flips:
        x = torch.where(per_patch(1) < 0.5, x.flip(-1), x)
        x = torch.where(per_patch(2) < 0.5, x.flip(-2), x)
    if settings.brightness > 0:
        x = (x * _factor(per_patch(3), settings.brightness)).clamp(0.0, 1.0)
    if settings.contrast > 0:
        mean_grey = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = _blend(x, mean_grey, _factor(per_patch(4), settings.contrast))
    if settings.saturation > 0:
        x = _blend(x, _grey(x), _factor(per_patch(5), settings.saturation))
    if settings.hue > 0:
        angle = (draws[:, 6] * 2 - 1) * settings.hue * 2 * math.pi
        x = _rotate_hue(x, angle)
    return x


def _factor(u: Tensor, strength: float) -> Tensor:
    return 1.0 + (u * 2.0 - 1.0) * strength


def _grey(x: Tensor) -> Tensor:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return LUMA[0] * r + LUMA[1] * g + LUMA[2] * b


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (other + (x - other) * factor).clamp(0.0, 1.0)


def _rotate_hue(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate colours about the grey axis by ``angle`` (radians, one per patch).

    A linear stand-in for an HSV hue shift: one 3x3 matrix per patch (Rodrigues' rotation about
    (1, 1, 1) / sqrt(3)), cheap on a GPU, greys unchanged.
    """
    cos = torch.cos(angle).view(-1, 1, 1)
    sin = torch.sin(angle).view(-1, 1, 1)
    eye = torch.eye(3, dtype=x.dtype, device=x.device).unsqueeze(0)
    k = 1.0 / math.sqrt(3.0)
    cross = torch.tensor(
        [[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]], dtype=x.dtype, device=x.device
    ).unsqueeze(0)
    outer = torch.full((1, 3, 3), 1.0 / 3.0, dtype=x.dtype, device=x.device)
    rotation = cos * eye + sin * cross + (1 - cos) * outer
    return torch.einsum("nij,njhw->nihw", rotation, x).clamp(0.0, 1.0)


def train_transform(
    x: Tensor,
    settings: AugmentSettings,
    normalisation: Normalisation,
    generator: torch.Generator,
) -> Tensor:
    """Augmentation then standardisation, for training batches."""
    return standardise(augment(x, settings, generator), normalisation)


def prepare_batch(
    patches: np.ndarray | Tensor,
    *,
    device: torch.device,
    normalisation: Normalisation,
    settings: AugmentSettings | None = None,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> Tensor:
    """uint8 (B, S, S, 3) patches -> model input on ``device``.

    With ``settings`` and ``generator``: training transform; otherwise evaluation transform.
    """
    x = to_float_nchw(patches, device)
    if settings is not None:
        if generator is None:
            raise ValueError("augmentation needs a generator")
        x = train_transform(x, settings, normalisation, generator)
    else:
        x = eval_transform(x, normalisation)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory_format)
