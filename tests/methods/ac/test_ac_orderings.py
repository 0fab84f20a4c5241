"""Orderings and masked convolutions: causality, no blind spot, exact zeros, plain CNN with masking off."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.methods.ac import ORDERINGS
from fewlabels.methods.ac.masked_conv import MaskedConv2d, zero_masked_weights
from fewlabels.methods.ac.model import ACNet
from fewlabels.methods.ac.orderings import from_canonical, is_before, to_canonical

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


def _dependency(model: ACNet, ordering: str | None, channels: int) -> torch.Tensor:
    """``[H, W, H, W]`` bool: dep[p][q] = d out[p] / d in[q] != 0 for some image of a small batch."""
    # several images: a path through a ReLU that happens to be inactive for one image is active for another
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, channels, SIZE, SIZE, dtype=torch.float64, generator=generator).requires_grad_()
    probs = model(x, orderings=[ordering] if ordering else None)["main"]
    # a random projection of the cluster distribution (the plain sum of a softmax has zero gradient)
    proj = torch.randn(probs.shape[1], dtype=torch.float64, generator=generator)
    score = torch.einsum("bkhw,k->bhw", probs.log(), proj).sum(0)
    # every row of the Jacobian d score[p] / d x in one batched backward
    basis = torch.eye(SIZE * SIZE, dtype=torch.float64).view(SIZE * SIZE, SIZE, SIZE)
    (jac,) = torch.autograd.grad(score, x, grad_outputs=basis, is_grads_batched=True)
    return (jac.abs().sum(dim=(1, 2)) > 0).view(SIZE, SIZE, SIZE, SIZE)


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
    dep = _dependency(causal_net, ordering, channels=2)
    radius = 3
    later, blind = [], []
    for p in itertools.product(range(SIZE), repeat=2):
        for q in itertools.product(range(SIZE), repeat=2):
            seen = bool(dep[p + q])
            if not (q == p or is_before(ordering, q, p, SIZE, SIZE)):
                if seen:
                    later.append((p, q))
            elif max(abs(q[0] - p[0]), abs(q[1] - p[1])) <= radius and not seen:
                blind.append((p, q))
    assert not later, f"{ordering}: outputs depend on later pixels (out, in): {later[:5]}"
    assert not blind, f"{ordering}: blind spots, outputs ignore earlier pixels (out, in): {blind[:5]}"


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
