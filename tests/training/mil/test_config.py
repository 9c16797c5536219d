from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from common.errors import ConfigurationError
from training.mil.config import RunConfig, paper_grid


def test_defaults_follow_the_paper() -> None:
    config = RunConfig(alpha=0.2, beta=0.0)
    assert config.patches_per_slide == 150
    assert config.patch_size == 224
    assert config.target_mpp == 0.5
    assert config.arch == "resnet50"
    assert config.epochs == 20
    assert config.lr == 1e-4
    assert (config.c0, config.c1) == (1.0, 1.0)
    assert config.selection_mode == "max"


def test_paper_grid_has_exactly_the_fifteen_configurations() -> None:
    grid = paper_grid()
    expected = {(a / 10, b / 10) for a in (2, 4, 6, 8, 10) for b in (0, 2, 4, 6, 8) if a + b <= 10}
    assert len(grid) == 15
    assert len(set(grid)) == 15
    assert set(grid) == expected
    assert (0.6, 0.4) in grid and (0.2, 0.8) in grid and (1.0, 0.0) in grid
    for alpha, beta in grid:
        RunConfig(alpha=alpha, beta=beta)  # every one validates


def test_float_sums_at_the_boundary_are_accepted() -> None:
    RunConfig(alpha=0.6, beta=0.4)
    RunConfig(alpha=0.7, beta=0.3)
    RunConfig(alpha=0.1 + 0.2, beta=0.7)  # 0.30000000000000004
    RunConfig(alpha=0.6, beta=0.4 + 1e-12)  # rounding noise from a computed value
    with pytest.raises(ConfigurationError, match="beta"):
        RunConfig(alpha=0.6, beta=0.4 + 1e-6)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -0.2}, "alpha"),
        ({"alpha": 1.2, "beta": 0.0}, "alpha"),
        ({"beta": -0.1}, "beta"),
        ({"alpha": 0.6, "beta": 0.6}, "beta"),
        ({"alpha": 0.8, "beta": 0.200001}, "beta"),
        ({"alpha": "0.5"}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"patches_per_slide": 0}, "patches_per_slide"),
        ({"patches_per_slide": 10**6}, "patches_per_slide"),
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": 16}, "patch_size"),
        ({"patch_size": 224.0}, "patch_size"),
        ({"target_mpp": 0.0}, "target_mpp"),
        ({"min_tissue": 1.5}, "min_tissue"),
        ({"arch": "vgg16"}, "arch"),
        ({"output_stride": 8}, "output_stride"),
        ({"instance": "cell"}, "instance"),
        ({"batchnorm": "sync"}, "batchnorm"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"c0": -1.0}, "c0"),
        ({"c0": 0.0, "c1": 0.0}, "c1"),
        ({"pretrained": ""}, "pretrained"),
        ({"jitter_hue": 0.9}, "jitter_hue"),
        ({"jitter_brightness": -0.1}, "jitter_brightness"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"amp": 1}, "amp"),
        ({"num_workers": -1}, "num_workers"),
        ({"slide_score": "mean"}, "slide_score"),
        ({"slide_score_k": 0}, "slide_score_k"),
        ({"selection_metric": "accuracy"}, "selection_metric"),
        ({"normalisation_patches": 0}, "normalisation_patches"),
    ],
)
def test_invalid_values_raise_naming_the_field(changes: dict[str, Any], field: str) -> None:
    kwargs: dict[str, Any] = {"alpha": 0.2, "beta": 0.2, **changes}
    with pytest.raises(ConfigurationError) as info:
        RunConfig(**kwargs)
    assert info.value.message.startswith(f"{field}:")
    assert info.value.details["field"] == field
    assert info.value.code == "invalid_configuration"


def test_round_trip_through_json() -> None:
    config = RunConfig(alpha=0.4, beta=0.2, arch="resnet18", output_stride=16, seed=7)
    data = json.loads(json.dumps(config.to_dict()))
    assert RunConfig.from_dict(data) == config


def test_json_integers_become_floats() -> None:
    config = RunConfig.from_dict({"alpha": 1, "beta": 0, "lr": 1})
    assert isinstance(config.alpha, float) and isinstance(config.lr, float)
    assert config == RunConfig(alpha=1.0, beta=0.0, lr=1.0)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigurationError, match="unknown configuration key.*learning_rate"):
        RunConfig.from_dict({"alpha": 0.2, "beta": 0.0, "learning_rate": 0.1})


def test_from_dict_requires_alpha_and_beta() -> None:
    with pytest.raises(ConfigurationError, match="missing configuration key.*beta"):
        RunConfig.from_dict({"alpha": 0.2})
    with pytest.raises(ConfigurationError, match="mapping"):
        RunConfig.from_dict([("alpha", 0.2)])  # type: ignore[arg-type]


def test_missing_optional_keys_take_defaults() -> None:
    assert RunConfig.from_dict({"alpha": 0.2, "beta": 0.4}).epochs == 20


def test_config_is_frozen_and_replace_validates() -> None:
    config = RunConfig(alpha=0.2, beta=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.alpha = 0.4  # type: ignore[misc]
    assert config.replace(epochs=3).epochs == 3
    with pytest.raises(ConfigurationError, match="beta"):
        config.replace(beta=0.9)


def test_selection_mode() -> None:
    assert RunConfig(alpha=0.2, beta=0.0, selection_metric="val_loss").selection_mode == "min"
    assert RunConfig(alpha=0.2, beta=0.0, selection_metric="val_pixel_auc").selection_mode == "max"
