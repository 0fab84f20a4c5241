"""The stacked auxiliary decoders are K UpsampleDecoders computed together."""

from __future__ import annotations

import torch

from fewlabels.methods.cct.decoders import StackedUpsampleDecoders
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
