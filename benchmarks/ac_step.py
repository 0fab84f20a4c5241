"""Cost of AC's two-view training step relative to one view of the same network.

Times, in one process and interleaved (machines are noisy; only the ratio means something):

- ``one_view``: forward + backward of the network on B images (one ordering, a scalar of the output);
- ``two_view``: the AC step: two sampled orderings, both views in one batched forward (unmasked stem once; each
  masked layer convolves each view's half of the batch with the shared weights under that view's mask: the
  one-set-of-weights, 8-masks construction), ``iic_segmentation_loss`` between them, backward.

Target: ``two_view_over_one_view <= 2.0`` (two views cost at most twice one view, the loss included).
The last stdout line is a JSON object with the timings and the ratio.

    python benchmarks/ac_step.py                       # CPU-sized defaults
    python benchmarks/ac_step.py --device cuda --batch 120 --size 128 --widths 64 128 --displacement 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from fewlabels.engine.allocator import keep_freed_memory
from fewlabels.methods.ac.losses import iic_segmentation_loss
from fewlabels.methods.ac.model import ACNet
from fewlabels.methods.ac.views import sample_orderings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def view_steps(
    model: nn.Module,
    images: torch.Tensor,
    displacement: int,
    collapsed: bool,
    autocast: Callable[[], AbstractContextManager],
) -> dict[str, Callable[[], torch.Tensor]]:
    """The two timed closures on an AC network (an ``ACNet``) and a batch: ``one_view`` (forward + backward of one
    ordering, a scalar of the output) and ``two_view`` (the AC step: two sampled orderings in one batched forward,
    ``iic_segmentation_loss`` between them, backward). Each returns its loss, detached; gradients accumulate (zero
    them between calls)."""

    def one_view() -> torch.Tensor:
        with autocast():
            probs = model(images, orderings=("tl_row",))["main"]
            loss = probs.float().clamp_min(1e-8).log().mean()
        loss.backward()
        return loss.detach()

    def two_view() -> torch.Tensor:
        with autocast():
            probs = model(images, orderings=sample_orderings())["main"]
        p1, p2 = probs.float().chunk(2)
        loss = iic_segmentation_loss(p1, p2, displacement, 1.0, collapsed)
        loss.backward()
        return loss.detach()

    return {"one_view": one_view, "two_view": two_view}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--decoder-blocks", type=int, default=1)
    parser.add_argument("--mask-from", default="features", choices=["input", "features", "decoder"])
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--displacement", type=int, default=5)
    parser.add_argument("--collapsed", action="store_true", help="collapsed joint (default: IIC's per-shift)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    args = parser.parse_args()
    keep_freed_memory()  # as the training engine does on CPU (fewlabels.engine.allocator)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = ACNet(3, args.widths, args.decoder_blocks, args.mask_from, k=args.k).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    ctx = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if args.bf16
        else (lambda: torch.autocast(device.type, enabled=False))
    )

    fns = view_steps(model, images, args.displacement, args.collapsed, ctx)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name in fns:  # warm-up (allocator, cudnn autotuning, lazy init)
        fns[name]()
        fns[name]()
    for _ in range(args.repeats):
        for name, fn in fns.items():
            model.zero_grad(set_to_none=True)
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["two_view"] / med["one_view"]
    print(
        f"device={device} batch={args.batch} size={args.size} widths={args.widths} T={args.displacement} "
        f"collapsed={args.collapsed} threads={torch.get_num_threads()}"
    )
    for name, t in med.items():
        print(f"  {name:9s} median {t * 1000:9.2f} ms  (min {min(times[name]) * 1000:.2f} ms)")
    print(f"  two_view / one_view = {ratio:.3f} (target <= 2.0)")
    print(
        json.dumps(
            {
                "device": str(device),
                "batch": args.batch,
                "size": args.size,
                "displacement": args.displacement,
                "collapsed": args.collapsed,
                "one_view_ms": round(med["one_view"] * 1000, 3),
                "two_view_ms": round(med["two_view"] * 1000, 3),
                "two_view_over_one_view": round(ratio, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
