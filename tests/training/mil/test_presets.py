from __future__ import annotations

import numpy as np
import pytest
import torch

from training.mil.presets import (
    AugmentSettings,
    Normalisation,
    augment,
    compute_normalisation,
    eval_transform,
    prepare_batch,
    standardise,
    to_float_nchw,
)

NO_JITTER = AugmentSettings(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def uint8_patches(n: int = 6, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/reflections of a (3, S, S) image."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        out += [r, r.flip(-1)]
    return out


def test_compute_normalisation_matches_numpy() -> None:
    batches = [uint8_patches(4, 8, 1), uint8_patches(3, 8, 2)]
    stats = compute_normalisation(iter(batches))
    pixels = np.concatenate([b.reshape(-1, 3) for b in batches]).astype(np.float64) / 255
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.std, pixels.std(axis=0), rtol=1e-7)
    mean, std = stats  # unpacks like the (mean, std) pair it is
    assert len(mean) == len(std) == 3


def test_compute_normalisation_errors_and_constant_channels() -> None:
    with pytest.raises(ValueError, match="zero patches"):
        compute_normalisation([])
    with pytest.raises(ValueError, match="B, S, S, 3"):
        compute_normalisation([np.zeros((2, 8, 8), dtype=np.uint8)])
    flat = compute_normalisation([np.full((1, 4, 4, 3), 128, dtype=np.uint8)])
    assert min(flat.std) > 0  # no division by zero later


def test_normalisation_dict_round_trip() -> None:
    stats = Normalisation((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert Normalisation.from_dict(stats.to_dict()) == stats
    with pytest.raises(ValueError):
        Normalisation.from_dict({"mean": [0.1], "std": [0.2]})


def test_to_float_nchw() -> None:
    patches = uint8_patches(2, 8)
    x = to_float_nchw(patches)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert abs(float(x[1, 2, 3, 4]) - patches[1, 3, 4, 2] / 255.0) < 1e-6
    cl = to_float_nchw(torch.from_numpy(patches), "cpu", channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, x)
    with pytest.raises(ValueError):
        to_float_nchw(np.zeros((2, 3, 8, 8), dtype=np.uint8))


def test_standardise_and_eval_transform() -> None:
    stats = Normalisation((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    x = torch.ones(1, 3, 2, 2)
    y = eval_transform(x, stats)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
    assert torch.equal(y, standardise(x, stats))


def test_augment_is_reproducible_from_the_generator() -> None:
    x = to_float_nchw(uint8_patches(16))
    settings = AugmentSettings(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)
    a = augment(x, settings, generator(5))
    b = augment(x, settings, generator(5))
    c = augment(x, settings, generator(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_geometric_augmentation_only_permutes_pixels() -> None:
    x = to_float_nchw(uint8_patches(32, 6))
    out = augment(x, NO_JITTER, generator(0))
    seen = set()
    for i in range(len(x)):
        matches = [k for k, t in enumerate(dihedral(x[i])) if torch.equal(out[i], t)]
        assert matches, f"patch {i} is not a rotation/reflection of its input"
        seen.add(matches[0])
    assert len(seen) >= 6  # 32 draws cover (nearly) all 8 transforms


def test_rotations_only_without_flips() -> None:
    x = to_float_nchw(uint8_patches(32, 6))
    settings = AugmentSettings(flips=False, brightness=0, contrast=0, saturation=0, hue=0)
    out = augment(x, settings, generator(1))
    for i in range(len(x)):
        rotations = [torch.rot90(x[i], k, dims=(-2, -1)) for k in range(4)]
        assert any(torch.equal(out[i], r) for r in rotations)


def test_everything_off_is_identity() -> None:
    x = to_float_nchw(uint8_patches(4))
    off = AugmentSettings(rot90=False, flips=False, brightness=0, contrast=0, saturation=0, hue=0)
    assert torch.equal(augment(x, off, generator(0)), x)


def test_colour_jitter_keeps_greys_grey_under_hue_rotation() -> None:
    grey = torch.full((4, 3, 4, 4), 0.4)
    settings = AugmentSettings(
        rot90=False, flips=False, brightness=0, contrast=0, saturation=0, hue=0.5
    )
    out = augment(grey, settings, generator(0))
    assert torch.allclose(out, grey, atol=1e-6)
    colour = torch.zeros(64, 3, 2, 2)
    colour[:, 0] = 0.8
    shifted = augment(colour, settings, generator(0))
    assert not torch.allclose(shifted, colour)


def test_colour_jitter_is_modest() -> None:
    x = to_float_nchw(uint8_patches(16))
    settings = AugmentSettings(rot90=False, flips=False)  # default strengths
    out = augment(x, settings, generator(3))
    assert (out - x).abs().mean() < 0.1


def test_prepare_batch_train_and_eval() -> None:
    patches = uint8_patches(4)
    stats = Normalisation((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    device = torch.device("cpu")
    evaluated = prepare_batch(patches, device=device, normalisation=stats)
    assert torch.allclose(evaluated, (to_float_nchw(patches) - 0.5) / 0.25)
    trained = prepare_batch(
        patches,
        device=device,
        normalisation=stats,
        settings=AugmentSettings(),
        generator=generator(0),
        channels_last=True,
    )
    assert trained.shape == (4, 3, 8, 8)
    assert trained.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="generator"):
        prepare_batch(patches, device=device, normalisation=stats, settings=AugmentSettings())


def test_augment_handles_an_empty_batch_and_rejects_rectangles() -> None:
    empty = torch.zeros(0, 3, 4, 4)
    assert augment(empty, AugmentSettings(), generator(0)).shape == empty.shape
    with pytest.raises(ValueError, match="square"):
        augment(torch.zeros(1, 3, 4, 6), AugmentSettings(), generator(0))
