from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torchvision

from common.errors import ConfigurationError, ModelWeightsUnavailableError
from training.mil.config import RunConfig
from training.mil.model import (
    IMAGENET_WEIGHT_FILES,
    FullyConvResNet,
    build_model,
    imagenet_weights_path,
    map_shape,
)


def config(**changes: object) -> RunConfig:
    base = RunConfig(alpha=0.2, beta=0.0, arch="resnet18", pretrained="none")
    return base.replace(**changes)


def forward_shape(model: torch.nn.Module, size: int, batch: int = 1) -> tuple[int, ...]:
    model.eval()
    with torch.inference_mode():
        return tuple(model(torch.rand(batch, 3, size, size)).shape)


def test_resnet18_gives_7x7_at_stride_32_and_14x14_at_stride_16() -> None:
    assert forward_shape(build_model(config()), 224, batch=2) == (2, 1, 7, 7)
    assert forward_shape(build_model(config(output_stride=16)), 224) == (1, 1, 14, 14)


@pytest.mark.parametrize("arch", ["resnet34", "resnet50"])
def test_deeper_architectures_at_both_strides(arch: str) -> None:
    # 64 px keeps this fast: stride 32 -> 2x2, stride 16 -> 4x4.
    assert forward_shape(build_model(config(arch=arch)), 64) == (1, 1, 2, 2)
    assert forward_shape(build_model(config(arch=arch, output_stride=16)), 64) == (1, 1, 4, 4)


def test_map_shape_helper() -> None:
    assert map_shape(build_model(config(output_stride=16)), 64) == (4, 4)


def test_stride_16_variant_has_the_same_parameters_and_is_dilated() -> None:
    plain = build_model(config())
    dilated = build_model(config(output_stride=16))
    plain_shapes = {k: v.shape for k, v in plain.state_dict().items()}
    dilated_shapes = {k: v.shape for k, v in dilated.state_dict().items()}
    assert plain_shapes == dilated_shapes
    layer4 = dilated.backbone.layer4
    assert layer4[0].conv1.stride == (1, 1) and layer4[0].downsample[0].stride == (1, 1)
    assert layer4[0].conv1.dilation == (1, 1) and layer4[0].conv2.dilation == (2, 2)
    assert layer4[1].conv1.dilation == (2, 2) and layer4[1].conv2.dilation == (2, 2)
    # The first three stages are untouched: same weights give the same layer3 output.
    dilated.load_state_dict(plain.state_dict())
    plain.eval()
    dilated.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        b1, b2 = plain.backbone, dilated.backbone
        f1 = b1.layer3(b1.layer2(b1.layer1(b1.maxpool(b1.relu(b1.bn1(b1.conv1(x)))))))
        f2 = b2.layer3(b2.layer2(b2.layer1(b2.maxpool(b2.relu(b2.bn1(b2.conv1(x)))))))
    assert torch.equal(f1, f2)


def test_model_has_no_classifier_parameters() -> None:
    model = build_model(config())
    assert not any(k.startswith("backbone.fc.") for k in model.state_dict())
    assert model.head.out_channels == 1


def test_gradients_flow_to_the_head_and_backbone() -> None:
    model = build_model(config())
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert model.head.weight.grad is not None
    assert model.backbone.conv1.weight.grad is not None


def test_imagenet_weights_missing_raise_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected = tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    start = time.monotonic()
    with pytest.raises(ModelWeightsUnavailableError) as info:
        build_model(RunConfig(alpha=0.2, beta=0.0, pretrained="imagenet"))
    assert time.monotonic() - start < 10  # never waits on a network
    message = info.value.message
    assert str(expected) in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert info.value.details["path"] == str(expected)
    assert info.value.code == "weights_unavailable"


def test_imagenet_weights_load_from_the_torchvision_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    path = imagenet_weights_path("resnet18")
    assert path == tmp_path / "hub" / "checkpoints" / IMAGENET_WEIGHT_FILES["resnet18"]
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = build_model(config(pretrained="imagenet"))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(
        model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var
    )
    # The same weights serve the dilated variant.
    dilated = build_model(config(pretrained="imagenet", output_stride=16))
    assert torch.equal(dilated.backbone.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)


def test_pretrained_none_is_random() -> None:
    torch.manual_seed(1)
    a = build_model(config())
    torch.manual_seed(2)
    b = build_model(config())
    assert not torch.equal(a.backbone.conv1.weight, b.backbone.conv1.weight)


def test_weights_from_a_torchvision_state_dict_file(tmp_path: Path) -> None:
    reference = torchvision.models.resnet34(weights=None)
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(config(arch="resnet34", pretrained=str(path)))
    assert torch.equal(model.backbone.layer3[2].conv1.weight, reference.layer3[2].conv1.weight)


def test_weights_from_own_state_dict_include_the_head(tmp_path: Path) -> None:
    source = FullyConvResNet("resnet18", 32)
    torch.nn.init.constant_(source.head.weight, 0.125)
    path = tmp_path / "model.pt"
    # As a checkpoint would hold it, with DDP's prefix.
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = build_model(config(pretrained=str(path)))
    assert torch.equal(model.head.weight, source.head.weight)
    assert torch.equal(model.backbone.conv1.weight, source.backbone.conv1.weight)


def test_weights_of_another_architecture_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ConfigurationError, match="do not fit a resnet34"):
        build_model(config(arch="resnet34", pretrained=str(path)))


def test_missing_or_corrupt_weight_files(tmp_path: Path) -> None:
    with pytest.raises(ModelWeightsUnavailableError, match="not found"):
        build_model(config(pretrained=str(tmp_path / "absent.pth")))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ModelWeightsUnavailableError, match="cannot read"):
        build_model(config(pretrained=str(corrupt)))
    not_tensors = tmp_path / "dict.pth"
    torch.save({"a": 1}, not_tensors)
    with pytest.raises(ConfigurationError, match="not a state dict"):
        build_model(config(pretrained=str(not_tensors)))


def test_load_pretrained_false_skips_loading() -> None:
    # Would raise if it tried to read the (absent) file.
    model = build_model(config(pretrained="/nonexistent/weights.pth"), load_pretrained=False)
    assert isinstance(model, FullyConvResNet)


def test_unknown_arch_or_stride_rejected() -> None:
    with pytest.raises(ConfigurationError):
        FullyConvResNet("resnet101", 32)
    with pytest.raises(ConfigurationError):
        FullyConvResNet("resnet18", 8)
