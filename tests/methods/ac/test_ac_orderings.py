"""Orderings and masked convolutions: one set of weights with 8 masks, equivalence with the flipped-feature
construction, causality and no blind spot (F1 at the input, F2/F3 at the feature level, F4 none), exact zeros,
plain CNN with masking off. Causality is checked in eval mode: training-mode BatchNorm couples positions through
the batch statistics (``masked_conv`` docstring; :func:`test_training_mode_batchnorm_is_the_documented_exception`)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.methods.ac import ORDERINGS
from fewlabels.methods.ac.masked_conv import MaskedConv2d, zero_masked_weights
from fewlabels.methods.ac.model import ACNet
from fewlabels.methods.ac.orderings import attention_mask, from_canonical, is_before, kernel_for, to_canonical

SIZE = 7


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to oversubscribed shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_bn(model: nn.Module) -> None:
    """Random BN statistics and affine parameters, then eval mode: causality is defined with fixed
    statistics."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    model.eval()


def _jacobian_support(fn: Callable[[torch.Tensor], torch.Tensor], channels: int) -> torch.Tensor:
    """``[S, S, S, S]`` bool: dep[p][q] = d fn(x)[p] / d x[q] != 0 for some image of a small batch.

    ``fn``: ``[B, channels, S, S] -> [B, k, S, S]`` log-probabilities or logits."""
    # several images: a path through a ReLU that happens to be inactive for one image is active for another
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, channels, SIZE, SIZE, dtype=torch.float64, generator=generator).requires_grad_()
    out = fn(x)
    # a random projection of the outputs (the plain sum of a log-softmax has a degenerate gradient)
    proj = torch.randn(out.shape[1], dtype=torch.float64, generator=generator)
    score = torch.einsum("bkhw,k->bhw", out, proj).sum(0)
    # every row of the Jacobian d score[p] / d x in one batched backward
    basis = torch.eye(SIZE * SIZE, dtype=torch.float64).view(SIZE * SIZE, SIZE, SIZE)
    (jac,) = torch.autograd.grad(score, x, grad_outputs=basis, is_grads_batched=True)
    return (jac.abs().sum(dim=(1, 2)) > 0).view(SIZE, SIZE, SIZE, SIZE)


def _dependency(model: ACNet, ordering: str | None, channels: int) -> torch.Tensor:
    """Input-level support of the network's output (F1: masked from the first layer)."""
    return _jacobian_support(lambda x: model(x, orderings=[ordering] if ordering else None)["main"].log(), channels)


def _feature_dependency(model: ACNet, ordering: str | None) -> torch.Tensor:
    """Feature-level support: the ordered part + heads on a ``SIZE x SIZE`` map of the unmasked part's width
    (F2/F3, whose unmasked stem/encoder pools and mixes all pixels by design)."""
    channels = next(m for m in model.ordered.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    return _jacobian_support(lambda f: model.ordered_logits(f, [ordering] if ordering else None)["main"], channels)


def _violations(dep: torch.Tensor, ordering: str, radius: int) -> tuple[list, list]:
    """(outputs that see a later pixel, earlier pixels within ``radius`` that an output misses)."""
    later, blind = [], []
    for p in itertools.product(range(SIZE), repeat=2):
        for q in itertools.product(range(SIZE), repeat=2):
            seen = bool(dep[p + q])
            if not (q == p or is_before(ordering, q, p, SIZE, SIZE)):
                if seen:
                    later.append((p, q))
            elif max(abs(q[0] - p[0]), abs(q[1] - p[1])) <= radius and not seen:
                blind.append((p, q))
    return later, blind


@pytest.fixture(scope="module", params=[False, True], ids=["convs", "convs+attention"])
def causal_net(request) -> ACNet:
    torch.manual_seed(0)
    # F1 variant: masked from the input, 3 masked 3x3 convs (stem + one residual block) -> radius 3
    net = ACNet(
        in_channels=2,
        widths=(8,),
        decoder_blocks=0,
        mask_from="input",
        k=3,
        attention=request.param,
        attention_heads=2,
    ).double()
    _random_bn(net)
    return net


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_every_ordering_is_causal_and_has_no_blind_spot(causal_net, ordering):
    """F1: from the input pixels to the output, radius 3 (stem conv + one residual block's two convs)."""
    later, blind = _violations(_dependency(causal_net, ordering, channels=2), ordering, radius=3)
    assert not later, f"{ordering}: outputs depend on later pixels (out, in): {later[:5]}"
    assert not blind, f"{ordering}: blind spots, outputs ignore earlier pixels (out, in): {blind[:5]}"


@pytest.fixture(scope="module", params=["features", "decoder"], ids=["F2", "F3"])
def feature_net(request) -> tuple[ACNet, int]:
    """F2 (orderings over the encoder and decoder blocks) and F3 (over the decoder blocks only), with attention;
    radius = the masked 3x3 convs on the path (F2: 2 encoder + 2 decoder, F3: 2 decoder)."""
    torch.manual_seed(4)
    net = ACNet(
        in_channels=2, widths=(8,), decoder_blocks=1, mask_from=request.param, k=3, attention=True, attention_heads=2
    ).double()
    _random_bn(net)
    return net, 4 if request.param == "features" else 2


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_f2_f3_are_causal_without_blind_spot_at_the_feature_level(feature_net, ordering):
    net, radius = feature_net
    later, blind = _violations(_feature_dependency(net, ordering), ordering, radius)
    assert not later, f"{ordering}: outputs depend on later feature positions: {later[:5]}"
    assert not blind, f"{ordering}: blind spots at the feature level: {blind[:5]}"


def test_f4_has_no_ordering_and_masking_off_sees_both_sides():
    """F4 (IIC baseline) and any network with its masks removed see the later pixels too (a plain CNN)."""
    torch.manual_seed(5)
    f4 = ACNet(in_channels=2, widths=(8,), decoder_blocks=0, mask_from="none", k=3).double()
    _random_bn(f4)
    assert not any(isinstance(m, MaskedConv2d) for m in f4.modules())
    f1 = ACNet(in_channels=2, widths=(8,), decoder_blocks=0, mask_from="input", k=3).double()
    _random_bn(f1)
    f1.masked = False
    centre = (SIZE // 2, SIZE // 2)
    for dep in (_dependency(f4, None, 2), _dependency(f1, None, 2)):
        for dy, dx in itertools.product((-1, 0, 1), repeat=2):  # the whole 3x3 neighbourhood, later pixels included
            assert bool(dep[centre + (centre[0] + dy, centre[1] + dx)])


def test_training_mode_batchnorm_is_the_documented_exception():
    """In training mode BatchNorm normalises with the batch's statistics, so an output depends (weakly) on every
    pixel, later ones included: the reason causality is defined and tested in eval mode (masked_conv docstring)."""
    torch.manual_seed(6)
    net = ACNet(in_channels=2, widths=(8,), decoder_blocks=0, mask_from="input", k=3).double()
    _random_bn(net)
    net.train()
    later, _ = _violations(_dependency(net, "tl_row", 2), "tl_row", radius=0)
    assert later  # a later pixel is "seen", through the batch mean and variance only
    net.eval()
    later, _ = _violations(_dependency(net, "tl_row", 2), "tl_row", radius=0)
    assert not later


def _flipped_feature_view(
    net: ACNet, features: torch.Tensor, ordering: str, map_kernels: bool
) -> tuple[ACNet, torch.Tensor]:
    """The other construction: map the features into ``ordering``'s canonical frame, run the canonical ``tl_row``
    masks there, map the logits back. ``map_kernels``: with every kernel first mapped into that frame
    (``to_canonical(W)``: the shared-weights model); without: the earlier code (one canonical mask, flipped maps).
    Returns the frame's network (a copy of ``net``) and the logits in the image frame."""
    frame = copy.deepcopy(net)
    if map_kernels:
        with torch.no_grad():
            for m in frame.modules():
                if isinstance(m, MaskedConv2d):
                    m.weight.copy_(to_canonical(m.weight.clone(), ordering))
    logits = frame.ordered_logits(to_canonical(features, ordering), ["tl_row"])["main"]
    return frame, from_canonical(logits, ordering)


@pytest.mark.parametrize("attention", [False, True], ids=["convs", "convs+attention"])
def test_shared_weight_masks_equal_the_flipped_feature_construction_per_view(attention):
    """Proof by computation of the identity in ``orderings``' docstring, for the whole ordered part (masked convs,
    BN, residuals, attention, heads) and for every ordering: outputs and weight gradients of the 8-mask model equal
    those of the flipped-feature construction with mapped kernels. The 8-mask construction is the one kept (it needs
    no flip/transpose copies and runs non-square views in one batch); without the kernel mapping the flipped-feature
    construction is another model."""
    torch.manual_seed(7)
    net = ACNet(
        in_channels=3, widths=(8,), decoder_blocks=1, mask_from="input", k=4, attention=attention, attention_heads=2
    ).double()
    _random_bn(net)
    with torch.no_grad():  # every trainable tap non-zero and distinct
        for m in net.modules():
            if isinstance(m, MaskedConv2d):
                m.weight.copy_(torch.randn_like(m.weight) * m.mask)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    r = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    conv = next(m for m in net.modules() if isinstance(m, MaskedConv2d))
    for o in ORDERINGS:
        net.zero_grad()
        ours = net.ordered_logits(x, [o])["main"]
        (ours * r).sum().backward()
        grad_ours = conv.weight.grad.clone()
        frame, theirs = _flipped_feature_view(net, x, o, map_kernels=True)
        (theirs * r).sum().backward()
        frame_conv = next(m for m in frame.modules() if isinstance(m, MaskedConv2d))
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grad_ours, from_canonical(frame_conv.weight.grad, o), rtol=1e-10, atol=1e-10)
        if o != "tl_row":
            _, old = _flipped_feature_view(net, x, o, map_kernels=False)
            assert (old - ours).abs().max() > 1e-3, o


def test_one_weight_eight_masks_and_every_kept_tap_is_trained():
    torch.manual_seed(8)
    net = ACNet(in_channels=3, widths=(8,), decoder_blocks=1, mask_from="features", k=3)
    convs = [m for m in net.modules() if isinstance(m, MaskedConv2d)]
    for m in convs:
        assert m.masks.shape == (8, *m.weight.shape)
        for i, o in enumerate(ORDERINGS):
            torch.testing.assert_close(m.masks[i], kernel_for(m.masks[0], o))
        torch.testing.assert_close(m.mask, m.masks.amax(0))
    # all 8 orderings in one stacked batch: every tap that some ordering keeps receives gradient
    out = net(torch.rand(2, 3, 12, 12), orderings=ORDERINGS)["main"]
    (out * torch.rand_like(out)).sum().backward()
    for m in convs:
        assert bool((m.weight.grad[m.mask == 1] != 0).all())
        assert bool((m.weight.grad[m.mask == 0] == 0).all())
        # the taps the canonical mask removes are trained by the other orderings
        assert bool((m.weight.grad[(m.masks[0] == 0) & (m.mask == 1)] != 0).all())


def test_stacked_views_equal_separate_passes_and_mask_free_inference_is_not_a_view():
    torch.manual_seed(9)
    net = ACNet(
        in_channels=3, widths=(8,), decoder_blocks=1, mask_from="features", k=4, attention=True, attention_heads=2
    )
    _random_bn(net)
    x = torch.rand(2, 3, 10, 14)  # non-square: views of every ordering share one batch
    both = net(x, orderings=("tr_col", "bl_row"))["main"]
    torch.testing.assert_close(both[:2], net(x, orderings=("tr_col",))["main"])
    torch.testing.assert_close(both[2:], net(x, orderings=("bl_row",))["main"])
    plain = net.cluster_probabilities(x, "plain")
    assert net.masked  # restored
    views = net(x, orderings=ORDERINGS)["main"].view(8, 2, 4, 10, 14)
    for v in range(8):  # the earlier code's mask-free output equalled the tl_row view (to 6e-8)
        assert (plain - views[v]).abs().max() > 1e-3, ORDERINGS[v]
    torch.testing.assert_close(net.cluster_probabilities(x, "ensemble"), views.mean(0))


def test_attention_masks_follow_each_ordering():
    for o in ORDERINGS:
        allowed = attention_mask(o, 3, 4)
        for p in range(12):
            for q in range(12):
                pq, qq = divmod(p, 4), divmod(q, 4)
                assert bool(allowed[p, q]) == (p == q or is_before(o, qq, pq, 3, 4)), (o, p, q)


def test_orderings_give_different_outputs_on_the_same_input():
    torch.manual_seed(1)
    net = ACNet(in_channels=3, widths=(8,), decoder_blocks=1, mask_from="features", k=4).eval()
    x = torch.rand(1, 3, 12, 12)
    outs = net(x, orderings=ORDERINGS)["main"]
    assert outs.shape == (8, 4, 12, 12)
    for i in range(8):
        for j in range(i + 1, 8):
            assert (outs[i] - outs[j]).abs().max() > 1e-4, (ORDERINGS[i], ORDERINGS[j])


def test_canonical_transform_round_trips_and_non_square_views_run():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    for o in ORDERINGS:
        torch.testing.assert_close(from_canonical(to_canonical(x, o), o), x)
    net = ACNet(in_channels=3, widths=(8,), decoder_blocks=0, mask_from="features", k=2).eval()
    out = net(torch.rand(2, 3, 8, 12), orderings=("tl_row", "br_col"))["main"]
    assert out.shape == (4, 2, 8, 12)
    torch.testing.assert_close(out.sum(1), torch.ones(4, 8, 12))


def test_masking_off_is_a_plain_cnn_with_the_same_weights():
    torch.manual_seed(2)
    net = ACNet(in_channels=3, widths=(8,), decoder_blocks=0, mask_from="input", k=3)
    _random_bn(net)
    net.masked = False
    stem_conv = net.ordered[0][0]
    block = net.ordered[1]
    assert isinstance(stem_conv, MaskedConv2d)

    def bn(m: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    def plain(x: torch.Tensor) -> torch.Tensor:
        h = F.relu(bn(net.ordered[0][1], F.conv2d(x, stem_conv.weight, padding=1)))
        o = F.relu(bn(block.bn1, F.conv2d(h, block.conv1.weight, padding=1)))
        o = bn(block.bn2, F.conv2d(o, block.conv2.weight, padding=1))
        skip = bn(block.skip[1], F.conv2d(h, block.skip[0].weight)) if isinstance(block.skip, nn.Sequential) else h
        return F.conv2d(F.relu(o + skip), net.head.weight, net.head.bias).softmax(1)

    x = torch.rand(2, 3, 9, 9)
    torch.testing.assert_close(net(x)["main"], plain(x))
    # masked again: the canonical view is a different function (some taps are removed) unless weights are zero
    with torch.no_grad():
        stem_conv.weight.add_(1.0)  # make masked taps non-zero: masking must now matter
    masked_out = net(x)["main"]
    net.masked = True
    assert (net(x)["main"] - masked_out).abs().max() > 1e-4


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_weights_stay_exactly_zero_after_optimizer_steps(optimizer):
    torch.manual_seed(3)
    net = ACNet(in_channels=3, widths=(8,), decoder_blocks=1, mask_from="features", k=3)
    convs = [m for m in net.modules() if isinstance(m, MaskedConv2d)]
    assert convs and all(bool((m.weight[m.mask == 0] == 0).all()) for m in convs)
    before = [m.weight.detach().clone() for m in convs]
    params = net.parameters()
    opt = (
        torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)
        if optimizer == "sgd"
        else torch.optim.Adam(params, lr=0.1, weight_decay=0.1)
    )
    for _ in range(2):
        out = net(torch.rand(2, 3, 8, 8), orderings=("tl_row", "br_col"))["main"]
        loss = (out * torch.rand_like(out)).sum()
        opt.zero_grad()
        loss.backward()
        for m in convs:
            assert bool((m.weight.grad[m.mask == 0] == 0).all())
        opt.step()
    zero_masked_weights(net)  # the Method.after_optimizer_step hook; a no-op here as nothing leaked
    for m, w0 in zip(convs, before):
        assert bool((m.weight[m.mask == 0] == 0).all())
        assert (m.weight[m.mask == 1] - w0[m.mask == 1]).abs().max() > 0  # the kept taps did train
