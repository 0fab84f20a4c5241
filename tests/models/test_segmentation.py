"""Segmentation heads (PSP, ICNR pixel-shuffle decoder) and the segmentation network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewlabels.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PixelShuffleUpsample,
    PSPModule,
    UpsampleDecoder,
    build_segmentation_model,
    count_parameters,
    icnr_,
    reflect_pad_to_multiple,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------------------
# decoder
# ----------------------------------------------------------------------------------------------------


def test_icnr_stage_output_is_checkerboard_free_at_init() -> None:
    stage = PixelShuffleUpsample(5, relu=True)
    constant = torch.full((1, 5, 3, 4), 0.7)
    out = stage(constant)
    assert out.shape == (1, 5, 6, 8)
    # the 4 sub-pixel outputs of a constant input are equal: the output is constant per channel
    subpixels = [out[..., i::2, j::2] for i in (0, 1) for j in (0, 1)]
    for sub in subpixels[1:]:
        assert torch.allclose(sub, subpixels[0])
    assert out.abs().sum() > 0
    # for any input, conv + shuffle at init equals conv + nearest upsampling of the first sub-pixel map
    x = torch.randn(2, 5, 3, 4)
    out = stage(x)
    assert torch.allclose(out, F.interpolate(out[..., 0::2, 0::2], scale_factor=2, mode="nearest"))


def test_without_icnr_the_subpixels_differ() -> None:
    stage = PixelShuffleUpsample(5)
    torch.nn.init.kaiming_normal_(stage.conv.weight)
    out = stage(torch.full((1, 5, 3, 4), 0.7))
    assert not torch.allclose(out[..., 0::2, 0::2], out[..., 1::2, 1::2])


def test_icnr_repeats_one_subkernel_per_output_channel() -> None:
    weight = icnr_(torch.empty(12, 7, 1, 1))
    groups = weight.view(3, 4, 7, 1, 1)
    assert torch.equal(groups, groups[:, :1].expand_as(groups))
    with pytest.raises(ValueError, match="multiple of scale"):
        icnr_(torch.empty(6, 7, 1, 1))


def test_decoder_shapes_and_parameter_count() -> None:
    decoder = UpsampleDecoder(512, 21, upscale=8)
    # 1x1 conv 512->21 without bias + 3 stages of (21->84 conv with bias)
    assert count_parameters(decoder) == 512 * 21 + 3 * (21 * 84 + 84) == 16_296
    assert len(decoder.stages) == 3
    assert decoder.classifier.bias is None
    assert decoder(torch.randn(2, 512, 3, 5)).shape == (2, 21, 24, 40)
    assert UpsampleDecoder(8, 3, upscale=32)(torch.randn(1, 8, 1, 1)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="power of two"):
        UpsampleDecoder(8, 3, upscale=6)


def test_final_logits_can_be_negative_at_init() -> None:
    # the reference CCT decoder ends with a ReLU, so all its logits are >= 0; ours has no final activation
    decoder = UpsampleDecoder(16, 4, upscale=8)
    logits = decoder(torch.rand(2, 16, 4, 4))
    assert (logits < 0).float().mean() > 0.2
    assert (logits > 0).float().mean() > 0.2
    assert isinstance(decoder.stages[-1].relu, torch.nn.Identity)
    assert all(isinstance(s.relu, torch.nn.ReLU) for s in list(decoder.stages)[:-1])


# ----------------------------------------------------------------------------------------------------
# PSP
# ----------------------------------------------------------------------------------------------------


def test_psp_branch_width_follows_the_input_channels() -> None:
    psp = PSPModule(96, out_channels=32)
    assert [stage[1].weight.shape for stage in psp.stages] == [(24, 96, 1, 1)] * 4
    assert psp.bottleneck[0].weight.shape == (32, 96 + 4 * 24, 3, 3)
    out = psp(torch.randn(2, 96, 7, 9))
    assert out.shape == (2, 32, 7, 9)
    assert (out >= 0).all()  # ends with BN + ReLU


def test_psp_reference_size_is_four_2048_to_512_branches_and_a_4096_to_512_fusion() -> None:
    psp = PSPModule(2048, 512)
    assert psp.bottleneck[0].weight.shape == (512, 4096, 3, 3)
    assert count_parameters(psp) == 4 * (2048 * 512 + 2 * 512) + 4096 * 512 * 9 + 2 * 512 == 23_073_792


# ----------------------------------------------------------------------------------------------------
# segmentation network
# ----------------------------------------------------------------------------------------------------


def test_cct_reference_model_parameter_count() -> None:
    # ResNet-50 deep stem, OS 8, PSP 512, one decoder for 21 classes.
    model = build_segmentation_model("resnet50", 21, output_stride=8, psp=True, psp_channels=512, deep_stem=True)
    assert count_parameters(model.encoder) == 23_631_808
    assert count_parameters(model.psp) == 23_073_792
    assert count_parameters(model.decoder) == 16_296
    assert count_parameters(model) == 46_721_896
    # The spec's "~47.2M" semi model adds K = 30 auxiliary decoders of the same head (16,296 each).
    assert count_parameters(model) + 30 * 16_296 == 47_210_776
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 21, 64, 64)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [(64, 64), (37, 45), (5, 7)])
def test_logits_have_the_input_size_for_any_size(output_stride: int, size: tuple[int, int]) -> None:
    model = build_segmentation_model("small_cnn", 3, output_stride=output_stride, psp_channels=16).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, *size))
    assert logits.shape == (2, 3, *size)
    assert torch.isfinite(logits).all()


def test_forward_equals_decode_encode_of_the_reflect_padded_input_cropped() -> None:
    model = build_segmentation_model("small_cnn", 4, psp_channels=16).eval()
    x = torch.rand(1, 3, 37, 45)
    padded = reflect_pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (40, 48)
    with torch.no_grad():
        z = model.encode(padded)
        assert z.shape == (1, model.feature_channels, 5, 6)
        full = model.decode(z)
        assert full.shape == (1, 4, 40, 48)
        assert torch.allclose(model(x), full[..., :37, :45])


def test_reflect_pad_mirrors_the_last_rows_and_columns() -> None:
    x = torch.arange(30.0).view(1, 1, 5, 6)
    padded = reflect_pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert torch.equal(padded[..., :5, :6], x)
    assert torch.equal(padded[0, 0, 5, :6], x[0, 0, 3])  # row 5 mirrors row 3
    assert torch.equal(padded[0, 0, :5, 6], x[0, 0, :, 4])
    assert reflect_pad_to_multiple(x, 1) is x


def test_inputs_are_normalised_with_configurable_mean_and_std() -> None:
    model = build_segmentation_model("small_cnn", 2, psp=False)
    assert model.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert model.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    assert {"mean", "std"} <= set(model.state_dict())
    mean_image = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert torch.allclose(model.normalize(mean_image), torch.zeros(1, 3, 4, 4), atol=1e-7)
    gray = build_segmentation_model("small_cnn", 2, psp=False, mean=[0.5], std=[0.25])
    assert torch.allclose(gray.normalize(torch.ones(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 2.0))
    assert gray(torch.rand(1, 1, 16, 16)).shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match=r"expected images \[B, 1, H, W\]"):
        gray(torch.rand(1, 3, 16, 16))


def test_without_psp_the_decoder_reads_the_encoder_features() -> None:
    model = build_segmentation_model("small_cnn", 5, psp=False)
    assert model.psp is None
    assert model.feature_channels == model.encoder.out_channels == 96
    assert model.decoder.in_channels == 96


def test_gradient_flows_from_the_logits_to_every_parameter() -> None:
    model = build_segmentation_model("small_cnn", 3, psp_channels=16)
    logits = model(torch.rand(2, 3, 32, 32))
    F.cross_entropy(logits, torch.randint(0, 3, (2, 32, 32))).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
    assert model.encoder.stem[0].weight.grad.abs().sum() > 0
    assert model.encoder.layer4[1][0].weight.grad.abs().sum() > 0


def test_backbone_and_head_parameters_partition_the_model() -> None:
    model = build_segmentation_model("small_cnn", 3, psp_channels=16)
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert backbone.isdisjoint(head)
    assert backbone | head == {id(p) for p in model.parameters()}
    assert count_parameters(model) == count_parameters(model.encoder) + sum(p.numel() for p in model.head_parameters())
