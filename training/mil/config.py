"""The one frozen configuration of a training run, and the paper's (alpha, beta) sweep grid.

This module imports neither torch nor Django, so the web layer can validate a configuration
cheaply. The same dict (``RunConfig.to_dict()``) is stored on the run row and inside every
checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigurationError

ARCHS = ("resnet18", "resnet34", "resnet50")
OUTPUT_STRIDES = (16, 32)
INSTANCES = ("patch", "pixel")
SLIDE_SCORES = ("max", "topk_mean")
# "frozen": batch-norm layers keep their running statistics during training (eval mode; their
# affine weights still learn). "train": statistics of each step's batch, as PyTorch does by
# default. A step's batch is ONE slide's patches, so in "train" mode the normalisation itself
# tells the network what the rest of the slide looks like: it can separate tumor from normal
# slides through batch composition instead of per-patch evidence, and then behaves differently
# at inference (running statistics). Frozen statistics close that shortcut; it is also the usual
# way to fine-tune ImageNet weights with small, homogeneous batches. Measured on a synthetic
# cohort (resnet18 from scratch, alpha 0.2, beta 0): held-out pixel AUC 0.97 frozen, 0.06 train.
BATCHNORM_MODES = ("frozen", "train")
# Model-selection metrics and whether a larger value is better.
SELECTION_METRICS: dict[str, str] = {
    # "auto": the pixel AUC when validation slides have contours, else the slide-level AUC.
    # Slide AUC saturates at 1.0 after an epoch or two on small validation sets and then says
    # nothing about the maps, which are what the method is for.
    "auto": "max",
    "val_slide_auc": "max",
    "val_pixel_auc": "max",
    "val_loss": "min",
}
PRETRAINED_CHOICES = ("imagenet", "none")  # anything else is a path to a state-dict file

# alpha and beta arrive as decimal fractions (0.6 + 0.4 is 1.0000000000000002 in floating
# point): comparisons against 1 allow this much slack so that the paper's grid is valid.
FRACTION_TOLERANCE = 1e-9

# One step holds every patch of a slide on the device at once (forward and backward); a few
# thousand 224-px patches already exceed the memory of any single GPU.
MAX_PATCHES_PER_SLIDE = 4096
# Below 32 px a stride-32 network produces less than one map cell per patch.
MIN_PATCH_SIZE = 32
# Beyond 2048 px a single patch is a sizeable fraction of a slide and a bag no longer fits.
MAX_PATCH_SIZE = 2048
# Guards against typos (2000 instead of 20) that would occupy a GPU worker for weeks.
MAX_EPOCHS = 1000
# More loader processes than this only adds memory pressure; workers are per GPU.
MAX_NUM_WORKERS = 64
# Colour jitter beyond these strengths turns H&E into other stains altogether.
MAX_JITTER = 0.5
MAX_HUE_JITTER = 0.5
# Normalisation statistics are measured on this many patches at most: the mean and std of three
# channels converge long before, and each patch costs a slide read.
MAX_NORMALISATION_PATCHES = 100_000


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one training run; immutable, validated on construction.

    ``alpha``: minimum assumed tumor fraction of a tumor slide (top scores get label 1).
    ``beta``: minimum assumed normal fraction of a tumor slide (bottom scores get label 0).
    Sizes are in pixels of the resampled patch at ``target_mpp`` micrometres per pixel.
    ``amp`` means bf16 autocast and only takes effect on CUDA; ``channels_last`` and
    ``compile`` likewise only take effect on CUDA. ``batchnorm``: see BATCHNORM_MODES.
    """

    alpha: float
    beta: float
    patches_per_slide: int = 150
    patch_size: int = 224
    target_mpp: float = 0.5
    min_tissue: float = 0.5
    arch: str = "resnet50"
    output_stride: int = 32
    instance: str = "patch"
    batchnorm: str = "frozen"
    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 0.0
    c0: float = 1.0
    c1: float = 1.0
    pretrained: str = "imagenet"
    aug_rot90: bool = True
    aug_flips: bool = True
    jitter_brightness: float = 0.1
    jitter_contrast: float = 0.1
    jitter_saturation: float = 0.1
    jitter_hue: float = 0.02
    normalisation_patches: int = 2048
    seed: int = 0
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    num_workers: int = 4
    slide_score: str = "max"
    slide_score_k: int = 5
    selection_metric: str = "auto"
    deterministic: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        self._check_method()
        self._check_sizes()
        self._check_choices()

    # -- validation -------------------------------------------------------------------------

    def _check_types(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = field.type
            if kind == "float":
                if not _is_number(value) or not math.isfinite(float(value)):
                    raise _error(field.name, f"must be a finite number, got {value!r}")
                # JSON turns 1.0 into 1: store floats as floats so that equal configs compare
                # and serialise equal.
                object.__setattr__(self, field.name, float(value))
            elif kind == "int":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise _error(field.name, f"must be an integer, got {value!r}")
            elif kind == "bool":
                if not isinstance(value, bool):
                    raise _error(field.name, f"must be true or false, got {value!r}")
            elif kind == "str" and (not isinstance(value, str) or not value):
                raise _error(field.name, f"must be a non-empty string, got {value!r}")

    def _check_method(self) -> None:
        if not self.alpha > 0:
            raise _error("alpha", f"must be > 0, got {self.alpha}")
        if self.alpha > 1 + FRACTION_TOLERANCE:
            raise _error("alpha", f"must be <= 1, got {self.alpha}")
        if self.beta < 0:
            raise _error("beta", f"must be >= 0, got {self.beta}")
        if self.alpha + self.beta > 1 + FRACTION_TOLERANCE:
            raise _error(
                "beta",
                f"alpha + beta must be <= 1 (contradictory proxy labels otherwise), "
                f"got {self.alpha} + {self.beta}",
            )
        for name in ("c0", "c1"):
            if getattr(self, name) < 0:
                raise _error(name, f"must be >= 0, got {getattr(self, name)}")
        if self.c0 == 0 and self.c1 == 0:
            raise _error("c1", "c0 and c1 cannot both be 0 (nothing would be learned)")

    def _check_sizes(self) -> None:
        if not 1 <= self.patches_per_slide <= MAX_PATCHES_PER_SLIDE:
            raise _error(
                "patches_per_slide",
                f"must be in [1, {MAX_PATCHES_PER_SLIDE}], got {self.patches_per_slide}",
            )
        if not MIN_PATCH_SIZE <= self.patch_size <= MAX_PATCH_SIZE:
            raise _error(
                "patch_size",
                f"must be in [{MIN_PATCH_SIZE}, {MAX_PATCH_SIZE}], got {self.patch_size}",
            )
        if not self.target_mpp > 0:
            raise _error("target_mpp", f"must be > 0, got {self.target_mpp}")
        if not 0 <= self.min_tissue <= 1:
            raise _error("min_tissue", f"must be in [0, 1], got {self.min_tissue}")
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise _error("epochs", f"must be in [1, {MAX_EPOCHS}], got {self.epochs}")
        if not self.lr > 0:
            raise _error("lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise _error("weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("jitter_brightness", "jitter_contrast", "jitter_saturation"):
            if not 0 <= getattr(self, name) <= MAX_JITTER:
                raise _error(name, f"must be in [0, {MAX_JITTER}], got {getattr(self, name)}")
        if not 0 <= self.jitter_hue <= MAX_HUE_JITTER:
            raise _error("jitter_hue", f"must be in [0, {MAX_HUE_JITTER}], got {self.jitter_hue}")
        if not 1 <= self.normalisation_patches <= MAX_NORMALISATION_PATCHES:
            raise _error(
                "normalisation_patches",
                f"must be in [1, {MAX_NORMALISATION_PATCHES}], got {self.normalisation_patches}",
            )
        if self.seed < 0:
            raise _error("seed", f"must be >= 0, got {self.seed}")
        if not 0 <= self.num_workers <= MAX_NUM_WORKERS:
            raise _error(
                "num_workers", f"must be in [0, {MAX_NUM_WORKERS}], got {self.num_workers}"
            )
        if self.slide_score_k < 1:
            raise _error("slide_score_k", f"must be >= 1, got {self.slide_score_k}")

    def _check_choices(self) -> None:
        choices: dict[str, tuple[object, ...]] = {
            "arch": ARCHS,
            "output_stride": OUTPUT_STRIDES,
            "instance": INSTANCES,
            "batchnorm": BATCHNORM_MODES,
            "slide_score": SLIDE_SCORES,
            "selection_metric": tuple(SELECTION_METRICS),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise _error(
                    name,
                    f"must be one of {', '.join(map(str, allowed))}; got {getattr(self, name)!r}",
                )

    # -- conversions ------------------------------------------------------------------------

    @property
    def selection_mode(self) -> str:
        """``"max"`` or ``"min"``: how ``selection_metric`` improves."""
        return SELECTION_METRICS[self.selection_metric]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field (floats, ints, bools and strings only)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from ``to_dict()`` output; missing optional keys take their defaults.

        Raises ConfigurationError on unknown keys (a typo must not silently fall back to a
        default) and on missing ``alpha``/``beta``.
        """
        if not isinstance(data, dict):
            raise ConfigurationError(
                f"a run configuration must be a mapping, got {type(data).__name__}"
            )
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown configuration key(s): {', '.join(map(str, unknown))}; "
                f"known keys: {', '.join(sorted(known))}",
                details={"fields": unknown},
            )
        missing = [name for name in ("alpha", "beta") if name not in data]
        if missing:
            raise ConfigurationError(
                f"missing configuration key(s): {', '.join(missing)}",
                details={"fields": missing},
            )
        return cls(**data)

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _error(field: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{field}: {message}", details={"field": field})


def paper_grid() -> list[tuple[float, float]]:
    """The paper's 15 (alpha, beta) configurations, alpha-major.

    alpha in {0.2, ..., 1.0}, beta in {0, 0.2, ..., 0.8}, alpha + beta <= 1. Built from
    integer fifths so that sums such as 0.6 + 0.4 are compared exactly.
    """
    fifths = 5
    return [
        (a / fifths, b / fifths)
        for a in range(1, fifths + 1)
        for b in range(0, fifths)
        if a + b <= fifths
    ]
