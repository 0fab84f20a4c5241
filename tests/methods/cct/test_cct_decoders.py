"""The stacked auxiliary decoders are K UpsampleDecoders computed together."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from fewlabels.methods.cct.decoders import StackedUpsampleDecoders
from fewlabels.methods.cct.fused import (
    _worker_pool,
    fold_batch,
    fused_stages_consistency,
    stages_value_and_grad,
)
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


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_decoders_split_over_worker_threads_give_the_single_call_gradients(workers: int) -> None:
    """The CPU split: each decoder's gradients are those of one call (same chunking per decoder), the sum differs
    at most by rounding, and the caller's intra-op thread count survives the workers' single-threaded setting."""
    torch.manual_seed(5)
    k, c, stages, b, hw = 5, 4, 2, 2, 6
    h = torch.randn(k, c, b * hw)
    weight, bias = 0.5 * torch.randn(stages, k, 4 * c, c), torch.randn(stages, k, 4 * c)
    target = fold_batch(torch.softmax(torch.randn(b, c, 4**stages, hw), dim=1))
    mask = (target.amax(dim=0, keepdim=True) > 0.4).float()
    before = torch.get_num_threads()
    for kind, m in (("mse", None), ("kl", mask)):
        one = stages_value_and_grad(h, weight, bias, target, m, kind, 96)
        split = stages_value_and_grad(h, weight, bias, target, m, kind, 96, workers=workers)
        torch.testing.assert_close(split[0], one[0], rtol=1e-6, atol=0.0)
        for got, want in zip(split[1:], one[1:], strict=True):
            assert got is not None and want is not None
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)
        no_params = stages_value_and_grad(h, weight, bias, target, m, kind, 96, False, workers)
        assert no_params[2] is None and no_params[3] is None
        torch.testing.assert_close(no_params[1], one[1], rtol=0.0, atol=0.0)
    assert torch.get_num_threads() == before
    # the workers themselves run their ops on one intra-op thread each (else 2 workers x n threads oversubscribe)
    pool = _worker_pool(min(workers, k))
    assert {pool.submit(torch.get_num_threads).result() for _ in range(4)} == {1}


def test_the_split_stays_in_the_calling_thread_under_a_dispatch_mode() -> None:
    """Dispatch modes are per thread: under torch's FLOP counter every product of the stages is counted, with
    ``workers`` above 1 as with 1."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(6)
    k, c, b, hw = 4, 3, 1, 5
    h = torch.randn(k, c, b * hw)
    weight, bias = torch.randn(2, k, 4 * c, c), torch.randn(2, k, 4 * c)
    target = fold_batch(torch.softmax(torch.randn(b, c, 16, hw), dim=1))
    counts = []
    for workers in (1, 2):
        with FlopCounterMode(display=False) as counter:
            stages_value_and_grad(h, weight, bias, target, None, "mse", None, workers=workers)
        counts.append(counter.get_total_flops())
    # per decoder and stage: forward, input gradient and weight gradient, 2 * 4C * C FLOPs per position
    positions = sum(b * hw * 4**s for s in range(2))
    assert counts == [k * 3 * 2 * 4 * c * c * positions] * 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_workers() -> None:
    """A child forked after the workers started inherits their pool but not their threads: it must start its own
    (else its first split waits forever)."""
    torch.manual_seed(7)
    h = torch.randn(4, 3, 5)
    weight, bias = torch.randn(1, 4, 12, 3), torch.randn(1, 4, 12)
    target = fold_batch(torch.softmax(torch.randn(1, 3, 4, 5), dim=1))
    want = stages_value_and_grad(h, weight, bias, target, None, "mse", None, workers=2)[1]
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if the split finishes with the parent's result
        try:
            got = stages_value_and_grad(h, weight, bias, target, None, "mse", None, workers=2)[1]
            os._exit(0 if torch.equal(got, want) else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's split did not finish in 60 s")
