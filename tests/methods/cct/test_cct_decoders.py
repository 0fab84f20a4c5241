"""The stacked auxiliary decoders are K UpsampleDecoders computed together."""

from __future__ import annotations

import pytest
import torch

from fewlabels.methods.cct.decoders import StackedUpsampleDecoders
from fewlabels.methods.cct.fused import fused_stages_consistency
from fewlabels.methods.cct.losses import batched_consistency_loss
from fewlabels.models import UpsampleDecoder


def test_stacked_decoders_equal_k_independent_upsample_decoders() -> None:
    torch.manual_seed(0)
    k, d, c, up = 3, 16, 5, 8
    singles = [UpsampleDecoder(d, c, up) for _ in range(k)]
    for dec in singles:  # non-zero biases so that the bias layout is checked too
        for stage in dec.stages:
            torch.nn.init.normal_(stage.conv.bias)
    stacked = StackedUpsampleDecoders(k, d, c, up)
    for i, dec in enumerate(singles):
        stacked.load_decoder(i, dec)
    x = torch.randn(k, 2, d, 3, 4)
    expected = torch.stack([dec(x[i]) for i, dec in enumerate(singles)])
    got = stacked(x)
    assert got.shape == (k, 2, c, 24, 32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # a slice of decoders uses the matching weights
    torch.testing.assert_close(stacked(x[1:], decoders=slice(1, None)), expected[1:], rtol=1e-5, atol=1e-5)


def test_final_logits_can_be_negative_and_export_round_trips() -> None:
    torch.manual_seed(1)
    stacked = StackedUpsampleDecoders(2, 8, 4, 4)
    x = torch.randn(2, 1, 8, 5, 5)
    out = stacked(x)
    assert (out < 0).any()  # no ReLU after the last stage (the reference's defect)
    torch.testing.assert_close(stacked.export_decoder(1)(x[1]), out[1], rtol=1e-5, atol=1e-5)


def test_subpixel_layout_round_trips_and_matches_the_decoder_output() -> None:
    torch.manual_seed(2)
    stacked = StackedUpsampleDecoders(2, 6, 3, 8)
    image = torch.randn(2, 5, 3, 16, 24)
    sub = stacked.to_subpixel_layout(image)
    assert sub.shape == (2, 5, 3, 64, 6)
    torch.testing.assert_close(stacked.from_subpixel_layout(sub, 2, 3), image)
    x = torch.randn(2, 5, 6, 2, 3)
    torch.testing.assert_close(stacked.to_subpixel_layout(stacked(x)), stacked.forward_subpixel(x))


# chunk (full-resolution elements; one decoder holds 4 classes x 64 sub-pixels x 12 positions = 3,072): 1 and 700
# split each decoder into runs of 1 and 2 positions, 6,144 holds two whole decoders, None all three.
@pytest.mark.parametrize(
    ("kind", "conf", "chunk"),
    [("mse", None, 1), ("mse", 0.5, None), ("kl", None, 700), ("kl", 0.5, 1), ("mse", 0.5, 6144), ("kl", None, 6144)],
)
def test_fused_stages_and_loss_match_autograd_in_value_and_gradient(
    kind: str, conf: float | None, chunk: int | None
) -> None:
    torch.manual_seed(3)
    stacked = StackedUpsampleDecoders(3, 8, 4, 8).double()
    with torch.no_grad():
        stacked.stage_bias.normal_()
    x = torch.randn(3, 2, 8, 2, 3, dtype=torch.float64, requires_grad=True)
    target = torch.softmax(3 * torch.randn(2, 4, 16, 24, dtype=torch.float64), dim=1)
    target_sub = stacked.to_subpixel_layout(target)

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(loss, [x, stacked.classifier, stacked.stage_weight, stacked.stage_bias]))

    ref = batched_consistency_loss(stacked.forward_subpixel(x), target_sub, kind, conf)
    h = torch.matmul(stacked.classifier.unsqueeze(1), x.flatten(-2))
    fused = fused_stages_consistency(h, stacked.stage_weight, stacked.stage_bias, target_sub, kind, conf, chunk)
    torch.testing.assert_close(fused, ref)
    for a, b in zip(grads(fused), grads(ref)):
        torch.testing.assert_close(a, b)
