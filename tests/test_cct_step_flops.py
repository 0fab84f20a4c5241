"""benchmarks/cct_step.py's FLOP count: exact on a linear layer, equal for the stacked and the loop implementations
(same math)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cct_step() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cct_step_under_test", BENCHMARKS / "cct_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look the module up while they are made
    spec.loader.exec_module(module)
    return module


def test_count_flops_of_a_linear_layer_forward_and_backward(cct_step: ModuleType) -> None:
    layer = nn.Linear(7, 5, bias=False)
    x = torch.randn(3, 7, requires_grad=True)

    def step() -> None:
        layer(x).sum().backward()

    # forward x @ W^T, backward grad_x = g @ W and grad_W = g^T @ x: three 3x7x5 products, 2 FLOPs per multiply-add
    assert cct_step.count_flops(step) == 3 * 2 * 3 * 7 * 5


def test_flops_only_run_stacked_equals_loop(cct_step: ModuleType) -> None:
    out = io.StringIO()
    argv = ["--encoder", "resnet18", "--size", "32", "--classes", "5", "--batch", "2", "--flops-only", "--no-memory"]
    with contextlib.redirect_stdout(out):
        cct_step.main([*argv, "--threads", "1"])
    res = json.loads(out.getvalue().strip().splitlines()[-1])
    assert not any(key.endswith("_s") for key in res), "--flops-only times nothing"
    # the fused implementation does the same products as K separate decoders, no more, no fewer
    assert res["stacked_k30_gflop"] == res["loop_k30_gflop"]
    assert res["stacked_k1_gflop"] == res["loop_k1_gflop"]
    assert res["loop_k30_over_stacked_k30_flops"] == 1.0
    assert res["k30_over_k1_flops"] == pytest.approx(res["stacked_k30_gflop"] / res["stacked_k1_gflop"], abs=1e-4)
    assert res["k30_over_k1_flops"] > 1.0


def test_the_worker_split_is_counted_like_the_serial_stages(cct_step: ModuleType) -> None:
    """With 2 threads the K = 30 model splits its fused stages over worker threads; the FLOP counter (per thread)
    must still see every product: the split and the serial configuration count the same FLOPs."""
    out = io.StringIO()
    argv = ["--encoder", "resnet18", "--size", "32", "--classes", "5", "--batch", "2", "--flops-only", "--no-memory"]
    before = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out):
            cct_step.main([*argv, "--threads", "2", "--skip-loop"])
    finally:
        torch.set_num_threads(before)
    res = json.loads(out.getvalue().strip().splitlines()[-1])
    assert res["serial_k30_gflop"] == res["stacked_k30_gflop"]
    assert res["serial_k30_over_stacked_k30_flops"] == 1.0
    assert res["stacked_k30_gflop"] > res["stacked_k1_gflop"]


def test_breakdown_counts_every_product_outside_the_convolutions(cct_step: ModuleType) -> None:
    """``--breakdown`` times the ops in ``MATMUL_OPS``: every non-convolution op to which the FLOP counter gives FLOPs
    in a K = 30 step (aux first layers, fused stages, VAT) must be one of them, else its time would land in "the
    rest" and the floor would be too low."""
    args = cct_step.argparse.Namespace(classes=5, batch=2, size=32, device=torch.device("cpu"))
    spec = cct_step.ModelSpec("resnet18", deep_stem=False, psp=True, loop=False, prefix="")
    step = cct_step.make_step(cct_step.build(args, spec, "serial", cct_step.k30_config([])), args)
    with cct_step.FlopCounterMode(display=False) as counter:
        step(False)
    ops = {str(op).replace(".", "::") for op, flops in counter.get_flop_counts()["Global"].items() if flops}
    products = {op for op in ops if "convolution" not in op}
    assert {"aten::bmm", "aten::baddbmm"} <= products, ops
    assert products <= cct_step.MATMUL_OPS, products - cct_step.MATMUL_OPS


def test_breakdown_run_reports_a_consistent_floor(cct_step: ModuleType) -> None:
    out = io.StringIO()
    argv = ["--encoder", "resnet18", "--size", "32", "--classes", "5", "--batch", "2", "--repeats", "1"]
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match="--threads 1"):
            cct_step.main([*argv, "--breakdown"])
        with contextlib.redirect_stdout(out):
            cct_step.main([*argv, "--breakdown", "--threads", "1", "--skip-loop", "--no-memory"])
    finally:
        torch.set_num_threads(before)
    res = json.loads(out.getvalue().strip().splitlines()[-1])
    assert res["matmul_k30_ms"] > 0 and res["matmul_k1_ms"] > 0  # the profiler saw the products of both steps
    added_mm = res["matmul_k30_ms"] - res["matmul_k1_ms"]
    assert res["k30_added_matmul_ms"] == pytest.approx(added_mm, abs=0.02)
    floor = (res["stacked_k1_s"] * 1e3 + res["k30_added_matmul_ms"]) / (res["stacked_k1_s"] * 1e3)
    assert res["k30_over_k1_matmul_floor"] == pytest.approx(floor, abs=2e-3)
