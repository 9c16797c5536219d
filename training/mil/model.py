"""Fully convolutional ResNet: one logit map per patch.

The torchvision ResNet is kept whole (so its state-dict keys, under ``backbone.``, match
torchvision's) but its global pooling and fully connected layer are never used; a 1x1
convolution on the last stage's features gives one logit per map cell. At output stride 32 a
224-px patch yields a 7x7 map; at output stride 16 the last stage is dilated instead of strided
and the map is 14x14.

Pretrained ImageNet weights are read only from torchvision's cache
(``torch.hub.get_dir()/checkpoints/<file>``): GPU workers may have no internet access, and a
download attempt there would hang a training job. When the file is absent,
:class:`~common.errors.ModelWeightsUnavailableError` says which file to put where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from common.errors import ConfigurationError, ModelWeightsUnavailableError
from training.mil.config import RunConfig

# The torchvision weight files, by architecture: the IMAGENET1K_V1 snapshots, i.e. the original
# ImageNet training the paper started from (torchvision's "DEFAULT" for resnet50 is V2).
IMAGENET_WEIGHT_FILES: dict[str, str] = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"
FEATURE_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
# Prefixes added to state-dict keys by DistributedDataParallel and torch.compile wrappers.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class FullyConvResNet(nn.Module):
    """ResNet backbone without global pooling, plus a 1x1 convolution head.

    ``forward(x)`` maps (N, 3, H, W) images to (N, 1, ceil(H / s), ceil(W / s)) logits where
    ``s`` is ``output_stride``.
    """

    def __init__(self, arch: str, output_stride: int) -> None:
        super().__init__()
        if arch not in FEATURE_CHANNELS:
            raise ConfigurationError(f"arch: unknown architecture {arch!r}")
        if output_stride not in (16, 32):
            raise ConfigurationError(f"output_stride: must be 16 or 32, got {output_stride}")
        self.arch = arch
        self.output_stride = output_stride
        constructor = getattr(torchvision.models, arch)
        if arch == "resnet50":
            dilate = [False, False, output_stride == 16]
            backbone = constructor(weights=None, replace_stride_with_dilation=dilate)
        else:
            backbone = constructor(weights=None)
            if output_stride == 16:
                _dilate_basic_last_stage(backbone)
        # Never called, and must not hold parameters the checkpoint would have to carry.
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head = nn.Conv2d(FEATURE_CHANNELS[arch], 1, kernel_size=1)

    def features(self, x: Tensor) -> Tensor:
        """The last stage's feature maps, (N, C, h, w)."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _dilate_basic_last_stage(backbone: nn.Module) -> None:
    """Turn layer4 of a BasicBlock ResNet (18/34) from stride 2 into stride 1, dilation 2.

    torchvision refuses dilation for BasicBlock, so this mirrors what it does for Bottleneck:
    convolutions whose input is already at the (now finer) layer4 resolution are dilated by 2,
    which keeps their receptive field equal to the strided network's.
    """
    layer4: Any = backbone.layer4
    first: Any = layer4[0]
    first.conv1.stride = (1, 1)
    # The first conv of block 0 sees layer3's grid, as it did before: no dilation.
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    convs = [first.conv2]
    for block in list(layer4)[1:]:
        convs += [block.conv1, block.conv2]
    for conv in convs:
        conv.dilation = (2, 2)
        conv.padding = (2, 2)


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every batch-norm layer in eval mode: running statistics are used and not updated.

    Their affine weights still receive gradients. Call after ``model.train()``, which undoes it.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision's cache keeps the ImageNet weights of ``arch``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHT_FILES[arch]


def build_model(config: RunConfig, *, load_pretrained: bool = True) -> FullyConvResNet:
    """Build the model of ``config`` and initialise it as ``config.pretrained`` says.

    ``"imagenet"``: torchvision's cached ImageNet weights (no download is ever attempted);
    ``"none"``: random initialisation; anything else: a path to a state-dict file, either a
    torchvision ResNet state dict, this model's own state dict, or a checkpoint holding one under
    ``"model"``; the backbone must match exactly, the head is loaded when present.
    ``load_pretrained=False`` skips loading (e.g. before restoring a checkpoint).
    Returns the model on the CPU, in training mode. Logits are (N, 1, h, w).
    """
    model = FullyConvResNet(config.arch, config.output_stride)
    if not load_pretrained or config.pretrained == "none":
        return model
    if config.pretrained == "imagenet":
        path = imagenet_weights_path(config.arch)
        if not path.is_file():
            url = TORCHVISION_WEIGHTS_URL + IMAGENET_WEIGHT_FILES[config.arch]
            raise ModelWeightsUnavailableError(
                f"ImageNet weights for {config.arch} are not in torchvision's cache and this "
                f"engine never downloads them: put the file {url} at {path} (or set "
                f"TORCH_HOME), or configure pretrained='none' or a path to a weights file",
                details={"path": str(path), "url": url, "arch": config.arch},
            )
        load_pretrained_weights(model, path)
    else:
        load_pretrained_weights(model, Path(config.pretrained))
    return model


def load_pretrained_weights(model: FullyConvResNet, path: Path) -> None:
    """Load a weights file into ``model``: strict on the backbone, head optional.

    Raises ModelWeightsUnavailableError when the file is absent or unreadable, and
    ConfigurationError when its tensors do not fit ``model``'s architecture.
    """
    if not path.is_file():
        raise ModelWeightsUnavailableError(
            f"pretrained weights file not found: {path}", details={"path": str(path)}
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise ModelWeightsUnavailableError(
            f"cannot read pretrained weights file {path}: {exc}", details={"path": str(path)}
        ) from exc
    state = _extract_state_dict(raw, path)
    backbone_state, head_state = _split_state(state)
    try:
        model.backbone.load_state_dict(backbone_state, strict=True)
        if head_state:
            model.head.load_state_dict(head_state, strict=True)
    except RuntimeError as exc:
        raise ConfigurationError(
            f"pretrained weights {path} do not fit a {model.arch} model: {exc}",
            details={"path": str(path), "field": "pretrained"},
        ) from exc


def _extract_state_dict(raw: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ConfigurationError(
            f"pretrained weights {path} are not a state dict of tensors",
            details={"path": str(path), "field": "pretrained"},
        )
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix) :]
                    stripped = True
        state[name] = value
    return state


def _split_state(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split into (backbone, head) states, accepting torchvision's or this model's keys."""
    if any(key.startswith("backbone.") for key in state):
        backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    else:
        backbone, head = dict(state), {}
    # The classifier of a torchvision model is replaced by the 1x1 head; its weights are unused.
    backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
    return backbone, head


def map_shape(model: FullyConvResNet, patch_size: int) -> tuple[int, int]:
    """The (h, w) of the logit map of one ``patch_size`` patch, computed by a dry run."""
    with torch.inference_mode():
        param = next(model.parameters())
        probe = torch.zeros(1, 3, patch_size, patch_size, device=param.device, dtype=param.dtype)
        was_training = model.training
        model.eval()
        try:
            out = model(probe)
        finally:
            model.train(was_training)
    return int(out.shape[-2]), int(out.shape[-1])
