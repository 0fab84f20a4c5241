"""Encoders (small CNN, dilated ResNets) and loading of pretrained backbone weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fewlabels.models import (
    PretrainedWeightsError,
    available_encoders,
    build_encoder,
    count_parameters,
    feature_shape,
    load_backbone_weights,
)

# torchvision's parameter counts minus the 1000-way classifier (fc: 512*e*1000 + 1000).
TORCHVISION_COUNTS_WITHOUT_FC = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_lists_the_five_encoders() -> None:
    assert available_encoders() == ["resnet101", "resnet18", "resnet34", "resnet50", "small_cnn"]


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS_WITHOUT_FC))
def test_resnet_parameter_count_equals_torchvision_without_classifier(name: str) -> None:
    encoder = build_encoder(name, output_stride=32)
    assert count_parameters(encoder) == TORCHVISION_COUNTS_WITHOUT_FC[name]
    assert encoder.out_channels == (512 if name in ("resnet18", "resnet34") else 2048)


def test_dilation_does_not_change_the_parameters() -> None:
    os32 = build_encoder("resnet18", output_stride=32)
    os8 = build_encoder("resnet18", output_stride=8)
    assert count_parameters(os8) == count_parameters(os32)
    os8.load_state_dict(os32.state_dict())  # same names and shapes: strict load succeeds


def test_resnet50_uses_torchvision_parameter_names() -> None:
    shapes = {k: tuple(v.shape) for k, v in build_encoder("resnet50").state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["bn1.running_var"] == (64,)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.1.weight"] == (256,)
    assert shapes["layer3.5.conv2.weight"] == (256, 256, 3, 3)
    assert shapes["layer4.2.bn3.bias"] == (2048,)
    assert not any(k.startswith("fc.") for k in shapes)
    assert "layer3.6.conv1.weight" not in shapes  # 6 blocks in layer3


def test_resnet50_deep_stem_at_output_stride_8_runs_at_one_eighth() -> None:
    encoder = build_encoder("resnet50", output_stride=8, deep_stem=True).eval()
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert shapes["conv1.0.weight"] == (64, 3, 3, 3)
    assert shapes["conv1.3.weight"] == (64, 64, 3, 3)
    assert shapes["conv1.6.weight"] == (128, 64, 3, 3)
    assert shapes["bn1.weight"] == (128,)
    assert shapes["layer1.0.conv1.weight"] == (64, 128, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 128, 1, 1)
    # 3x3 stem convs replace the 7x7 conv; layer1 reads 128 instead of 64 channels.
    expected = (
        TORCHVISION_COUNTS_WITHOUT_FC["resnet50"]
        - (64 * 3 * 49 + 2 * 64)
        + (64 * 3 * 9 + 64 * 64 * 9 + 128 * 64 * 9 + 2 * (64 + 64 + 128))
        + (64 * 64 + 256 * 64)
    )
    assert count_parameters(encoder) == expected == 23_631_808
    with torch.no_grad():
        out = encoder(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 2048, 8, 8)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "resnet34"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_encoder_output_shape_at_each_output_stride(name: str, output_stride: int) -> None:
    encoder = build_encoder(name, output_stride=output_stride).eval()
    assert encoder.output_stride == output_stride
    with torch.no_grad():
        out = encoder(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, encoder.out_channels, 64 // output_stride, 64 // output_stride)
    # odd sizes give ceil(H / os), as predicted by feature_shape
    with torch.no_grad():
        odd = encoder(torch.rand(1, 3, 37, 50))
    assert tuple(odd.shape[1:]) == feature_shape(encoder, 37, 50)
    assert odd.shape[-2:] == (-(-37 // output_stride), -(-50 // output_stride))


def test_output_stride_8_dilates_layer3_by_2_and_layer4_by_4() -> None:
    encoder = build_encoder("resnet50", output_stride=8)
    assert encoder.layer3[0].conv2.stride == (1, 1)
    assert encoder.layer3[0].downsample[0].stride == (1, 1)
    assert encoder.layer3[0].conv2.dilation == (1, 1)  # first block keeps the previous dilation
    assert encoder.layer3[1].conv2.dilation == (2, 2)
    assert encoder.layer4[0].conv2.dilation == (2, 2)
    assert encoder.layer4[2].conv2.dilation == (4, 4)
    assert encoder.layer4[2].conv2.padding == (4, 4)
    os16 = build_encoder("resnet18", output_stride=16)
    assert os16.layer3[0].conv1.stride == (2, 2)
    assert os16.layer4[0].conv1.stride == (1, 1)
    assert os16.layer4[1].conv2.dilation == (2, 2)


def test_dilation_keeps_resolution_where_stride_would_halve_it() -> None:
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        sizes = {os_: build_encoder("small_cnn", output_stride=os_).eval()(x).shape[-1] for os_ in (8, 16, 32)}
    assert sizes == {8: 8, 16: 4, 32: 2}


def test_small_cnn_is_small() -> None:
    encoder = build_encoder("small_cnn")
    assert 100_000 <= count_parameters(encoder) <= 300_000
    assert count_parameters(encoder) == 243_888
    assert encoder.out_channels == 96 and encoder.output_stride == 8


def test_in_channels_changes_the_first_convolution() -> None:
    encoder = build_encoder("resnet18", output_stride=32, in_channels=1).eval()
    assert encoder.conv1.weight.shape == (64, 1, 7, 7)
    with torch.no_grad():
        assert encoder(torch.rand(2, 1, 32, 32)).shape == (2, 512, 1, 1)


def test_unknown_encoder_name_suggests_the_closest_and_lists_all() -> None:
    with pytest.raises(ValueError) as info:
        build_encoder("resnet5")
    message = str(info.value)
    assert "unknown encoder 'resnet5'" in message
    assert "did you mean 'resnet50'" in message
    assert "resnet101, resnet18, resnet34, resnet50, small_cnn" in message


def test_invalid_output_stride_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="output_stride must be one of 8, 16, 32, got 4"):
        build_encoder("small_cnn", output_stride=4)


def test_deep_stem_is_refused_for_the_small_cnn() -> None:
    with pytest.raises(ValueError, match="deep_stem"):
        build_encoder("small_cnn", deep_stem=True)


# ----------------------------------------------------------------------------------------------------
# pretrained weights
# ----------------------------------------------------------------------------------------------------


def _randomize_bn_statistics(module: nn.Module) -> None:
    """Make eval-mode outputs depend on running statistics, so that a missed buffer would show."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def test_torchvision_style_checkpoint_with_module_prefix_and_fc_round_trips(tmp_path: Path) -> None:
    source = build_encoder("resnet18", output_stride=32).eval()
    _randomize_bn_statistics(source)
    state = {f"module.{k}": v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    state["module.fc.weight"] = torch.randn(1000, 512)
    state["module.fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)

    target = build_encoder("resnet18", output_stride=32).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(target(x), source(x))
        report = load_backbone_weights(target, path)
        assert torch.equal(target(x), source(x))
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["dropped"] == ["module.fc.weight", "module.fc.bias"]
    assert "layer4.1.bn2.running_var" in report["loaded"]


def test_build_encoder_loads_safetensors_and_nested_checkpoints(tmp_path: Path) -> None:
    source = build_encoder("small_cnn").eval()
    _randomize_bn_statistics(source)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = source(x)
    st_path = tmp_path / "weights.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(st_path))
    pth_path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, pth_path)
    for path in (st_path, pth_path):
        loaded = build_encoder("small_cnn", pretrained=str(path)).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)


def test_pspnet_deep_base_stem_names_are_mapped(tmp_path: Path) -> None:
    source = build_encoder("resnet18", output_stride=8, deep_stem=True).eval()
    _randomize_bn_statistics(source)
    # CCT's 3x3resnet50-imagenet.pth (like semseg's resnet50_v2.pth) names the stem conv1, bn1, .. bn3.
    rename = {
        "conv1.0.": "conv1.",
        "conv1.1.": "bn1.",
        "conv1.3.": "conv2.",
        "conv1.4.": "bn2.",
        "conv1.6.": "conv3.",
    }
    state = {}
    for key, value in source.state_dict().items():
        new = "bn3." + key[4:] if key.startswith("bn1.") else key
        for old, repl in rename.items():
            if key.startswith(old):
                new = repl + key[len(old) :]
        state[new] = value
    assert "conv3.weight" in state and "bn3.running_mean" in state
    path = tmp_path / "3x3resnet18-imagenet.pth"
    torch.save(state, path)
    target = build_encoder("resnet18", output_stride=8, deep_stem=True).eval()
    report = load_backbone_weights(target, path)
    assert report["missing"] == [] and report["unexpected"] == []
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_missing_file_says_what_to_download_and_where_to_pass_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(FileNotFoundError) as info:
        build_encoder("resnet50", pretrained=str(path))
    message = str(info.value)
    assert str(path) in message
    assert "resnet50-0676ba61.pth" in message
    assert "pretrained=PATH" in message
    with pytest.raises(FileNotFoundError, match="3x3resnet50-imagenet.pth"):
        load_backbone_weights(build_encoder("resnet50", deep_stem=True), path)


def test_missing_weights_of_an_encoder_without_imagenet_weights_point_to_seg_pretrain(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        build_encoder("small_cnn", pretrained=str(path))
    message = str(info.value)
    assert str(path) in message
    assert "no published ImageNet weights" in message and "configs/seg-pretrain" in message
    assert "Download" not in message


def test_a_run_folder_as_weights_path_names_the_weights_file_inside(tmp_path: Path) -> None:
    run = tmp_path / "out" / "seg-pretrain-scenes"
    run.mkdir(parents=True)
    save_file(build_encoder("small_cnn").state_dict(), str(run / "model.safetensors"))
    with pytest.raises(FileNotFoundError) as info:
        build_encoder("small_cnn", pretrained=str(tmp_path / "out"))
    message = str(info.value)
    assert "is a folder" in message
    assert str(run / "model.safetensors") in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder") as info:
        build_encoder("resnet18", pretrained=str(empty))
    assert "It holds" not in str(info.value)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "rgb.pth"
    torch.save(build_encoder("small_cnn").state_dict(), path)
    with pytest.raises(PretrainedWeightsError) as info:
        load_backbone_weights(build_encoder("small_cnn", in_channels=1), path)
    message = str(info.value)
    assert "'stem.0.weight'" in message
    assert "(16, 3, 3, 3)" in message and "(16, 1, 3, 3)" in message


def test_missing_backbone_keys_fail_strict_and_are_reported_otherwise(tmp_path: Path) -> None:
    source = build_encoder("small_cnn")
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    target = build_encoder("small_cnn")
    with pytest.raises(PretrainedWeightsError, match="missing key"):
        load_backbone_weights(target, path)
    report = load_backbone_weights(target, path, strict_backbone=False)
    assert report["unexpected"] == ["extra.weight"]
    assert "layer4.0.0.weight" in report["missing"]
    assert not any(k.endswith("num_batches_tracked") for k in report["missing"])
    assert torch.equal(target.layer1[0][0].weight, source.layer1[0][0].weight)
