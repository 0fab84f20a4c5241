"""Each CCT perturbation has its defining property."""

from __future__ import annotations

import copy

import pytest
import torch

from fewlabels.methods.cct.decoders import StackedUpsampleDecoders
from fewlabels.methods.cct.fused import fused_vat_direction
from fewlabels.methods.cct.perturbations import (
    connected_components,
    context_masking,
    cutout_keep_mask,
    feature_drop_mask,
    feature_noise,
    foreground_mask,
    object_masking,
    spatial_dropout,
    vat_direction,
)


def test_feature_drop_zeroes_exactly_the_positions_at_or_above_gamma_times_max() -> None:
    torch.manual_seed(0)
    z = torch.rand(2, 4, 5, 5)
    gamma = torch.tensor([0.7, 0.9])
    keep = feature_drop_mask(z, gamma)
    attention = z.mean(1)
    for i, g in enumerate(gamma):
        for b in range(2):
            expected = (attention[b] < g * attention[b].max()).float()
            torch.testing.assert_close(keep[i, b, 0], expected)
    assert keep.sum() < keep.numel()  # the peak is always dropped


def test_feature_noise_is_shared_over_the_batch_and_bounded() -> None:
    torch.manual_seed(0)
    z = torch.rand(3, 4, 5, 5) + 0.5
    out = feature_noise(z, n=2, uniform_range=0.3)
    ratio = out / z - 1.0  # the noise N
    torch.testing.assert_close(ratio[:, 0], ratio[:, 2])
    assert ratio.abs().max() <= 0.3 + 1e-6
    assert not torch.allclose(ratio[0], ratio[1])  # one draw per decoder


def test_spatial_dropout_drops_whole_channels_and_rescales() -> None:
    torch.manual_seed(0)
    z = torch.rand(2, 64, 3, 3) + 0.1
    out = spatial_dropout(z, n=3, p=0.5)
    ratio = (out / z).flatten(-2)
    assert set(ratio.unique().tolist()) <= {0.0, 2.0}
    assert (ratio == ratio[..., :1]).all()  # constant over each channel
    assert 0.3 < (ratio == 0).float().mean() < 0.7


def test_object_and_context_masking_split_the_features_by_the_prediction() -> None:
    labels = torch.tensor([[[0, 1], [2, 0]]])
    logits = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    fg = foreground_mask(logits, (2, 2), background_classes=(0,))
    torch.testing.assert_close(fg, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    z = torch.rand(1, 3, 2, 2) + 0.1
    obj = object_masking(z, fg, n=2)
    ctx = context_masking(z, fg, n=2)
    assert obj.shape == (2, 1, 3, 2, 2)
    assert (obj[:, :, :, fg[0] == 1] == 0).all() and (obj[:, :, :, fg[0] == 0] > 0).all()
    torch.testing.assert_close(obj + ctx, z.expand(2, -1, -1, -1, -1))
    # configurable background: class 2 as background too; nearest resize keeps every 2nd pixel of a 4x4 map
    fg2 = foreground_mask(labels.repeat_interleave(2, 1).repeat_interleave(2, 2), (2, 2), background_classes=(0, 2))
    torch.testing.assert_close(fg2, torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))


def test_connected_components_agree_with_scipy_on_a_winding_shape() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    mask = torch.zeros(1, 12, 12, dtype=torch.bool)
    mask[0, 1, 1:11] = True  # a U / S shape: long geodesic path
    mask[0, 1:6, 10] = True
    mask[0, 5, 2:11] = True
    mask[0, 5:9, 2] = True
    mask[0, 8, 2:11] = True
    mask[0, 3, 3:6] = True  # a separate blob
    mask[0, 11, 11] = True  # a single pixel, diagonal neighbours only count with 8-connectivity
    mask[0, 10, 10] = True
    ours = connected_components(mask)[0].numpy()
    ref, count = ndimage.label(mask[0].numpy(), structure=[[1, 1, 1], [1, 1, 1], [1, 1, 1]])
    assert count == 3
    pairs = set(zip(ours[ref > 0].tolist(), ref[ref > 0].tolist()))
    assert len(pairs) == count and len({a for a, _ in pairs}) == count  # a bijection between the labelings
    assert (ours[ref == 0] == 0).all()


def test_guided_cutout_erases_one_box_inside_each_object_and_nothing_on_background() -> None:
    torch.manual_seed(0)
    fg = torch.zeros(2, 20, 20)
    fg[0, 2:12, 3:8] = 1.0  # 10 x 5 object -> 4 x 2 box
    fg[0, 15:20, 10:20] = 1.0  # 5 x 10 object -> 2 x 4 box
    keep = cutout_keep_mask(fg, n=5, erase=0.4, min_area=2)
    assert keep.shape == (5, 2, 1, 20, 20)
    assert (keep[:, 1] == 1).all()  # background-only image: nothing erased
    for i in range(5):
        erased = keep[i, 0, 0] == 0
        first, second = erased[:13], erased[13:]
        assert first.sum() == 8 and second.sum() == 8
        ys, xs = first.nonzero(as_tuple=True)
        assert ys.min() >= 2 and ys.max() <= 11 and xs.min() >= 3 and xs.max() <= 7
        assert ys.max() - ys.min() + 1 == 4 and xs.max() - xs.min() + 1 == 2
        ys, xs = second.nonzero(as_tuple=True)
        assert ys.min() + 13 >= 15 and xs.min() >= 10
    # a too-small object is left alone
    tiny = torch.zeros(1, 8, 8)
    tiny[0, 4, 4] = 1.0
    assert (cutout_keep_mask(tiny, n=2, min_area=2) == 1).all()


def test_vat_perturbation_has_norm_eps_per_sample_and_follows_the_adversarial_direction() -> None:
    torch.manual_seed(0)
    dec = StackedUpsampleDecoders(2, 32, 4, 8)
    z = torch.relu(torch.randn(3, 32, 4, 4)) * 3

    def decode(x: torch.Tensor) -> torch.Tensor:
        return dec.forward_subpixel(x, slice(0, 2))

    eps = 2.0
    d0 = torch.rand(2, 3, 32, 4, 4) - 0.5
    r = vat_direction(z, decode, n=2, init=d0)
    norms = (eps * r).flatten(2).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full((2, 3), eps))
    # the same power iteration in float64 with a tiny step (the exact direction) agrees with float32's
    dec64 = copy.deepcopy(dec).double()
    r64 = vat_direction(z.double(), lambda x: dec64.forward_subpixel(x, slice(0, 2)), n=2, xi=1e-9, init=d0.double())
    cosine = (r.double() * r64).flatten(2).sum(-1)
    assert (cosine > 0.99).all()
    # the reference's absolute xi = 1e-6 (relative ~2.5e-8 here) in float32 does not give that direction
    r_ref = vat_direction(z, decode, n=2, xi=1e-6 / z.flatten(1).norm(dim=1).min().item(), init=d0)
    assert ((r_ref.double() * r64).flatten(2).sum(-1) < 0.9).any()


def test_fused_vat_direction_equals_the_autograd_power_iteration() -> None:
    torch.manual_seed(0)
    dec = StackedUpsampleDecoders(2, 16, 4, 8).double()
    with torch.no_grad():
        dec.stage_bias.normal_()
    z = torch.relu(torch.randn(3, 16, 3, 4, dtype=torch.float64))
    d0 = torch.rand(2, 3, 16, 3, 4, dtype=torch.float64) - 0.5
    ref = vat_direction(z, lambda x: dec.forward_subpixel(x), n=2, xi=1e-3, iterations=2, init=d0)
    fused = fused_vat_direction(
        z,
        dec.classifier,
        dec.stage_weight,
        dec.stage_bias,
        xi=1e-3,
        iterations=2,
        init=d0,
        chunk_elements=500,
    )
    torch.testing.assert_close(fused, ref)
