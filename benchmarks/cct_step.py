"""Time one CCT training step at K = 30 and K = 1 auxiliary decoders, for the stacked implementation and for a
straightforward one-decoder-at-a-time loop (K separate UpsampleDecoder modules, K separate loss calls).

Usage::

    python benchmarks/cct_step.py            # resnet18 OS8 + PSP, 21 classes, batch 2+2 at 128x128, CPU
    python benchmarks/cct_step.py --encoder resnet50 --deep-stem   # the reference model (slow on CPU)
    python benchmarks/cct_step.py --device cuda --batch 8 --size 320

A step is: forward (labeled + unlabeled), CE + w_u * L_u, backward, SGD update. The four configurations are
run interleaved (machines are noisy), ``--repeats`` times each after a warm-up; medians of the wall time and
of the process CPU time (less sensitive to other jobs on a shared machine) are reported. Memory: on a GPU
the peak ``torch.cuda.max_memory_allocated`` of a step; on the CPU (where torch's allocations are invisible
to tracemalloc) the size of the tensors autograd saves for the backward pass (unique storages, parameters
excluded), which is what grows with K. The last stdout line is a JSON object with ``k30_over_k1`` and
``loop_k30_over_k1`` among others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.engine.allocator import keep_freed_memory
from fewlabels.methods.cct.config import PerturbationsConfig
from fewlabels.methods.cct.losses import softmax_mse_loss
from fewlabels.methods.cct.model import CCTModel
from fewlabels.methods.cct.perturbations import (
    context_masking,
    feature_drop,
    feature_noise,
    foreground_mask,
    guided_cutout,
    object_masking,
    vat_direction,
)
from fewlabels.models import SegmentationNet, UpsampleDecoder, build_segmentation_model

K1 = PerturbationsConfig(vat=0, dropout=1, cutout=0, context_mask=0, object_mask=0, feature_drop=0, feature_noise=0)
K30 = PerturbationsConfig()  # 2 + 6 + 6 + 2 + 2 + 6 + 6


class LoopCCT(nn.Module):
    """The reference's structure: a list of K decoder modules, each perturbing ``z`` and decoding alone,
    and K separate loss calls. Same perturbation functions (``n = 1``) and losses as :class:`CCTModel`."""

    def __init__(self, net: SegmentationNet, cfg: PerturbationsConfig, background: tuple[int, ...] = (0,)) -> None:
        super().__init__()
        self.net, self.cfg, self.background = net, cfg, background
        self.kinds = [name for name, count in cfg.counts.items() for _ in range(count)]
        d, c, up = net.feature_channels, net.num_classes, net.output_stride
        self.aux = nn.ModuleList(UpsampleDecoder(d, c, up) for _ in self.kinds)

    def _perturb(self, kind: str, dec: nn.Module, z: Tensor, fg: Tensor) -> Tensor:
        cfg = self.cfg
        if kind == "vat":
            r = vat_direction(z, lambda x: dec(x[0]).unsqueeze(0), 1, cfg.vat_xi, cfg.vat_iterations)[0]
            return z + cfg.vat_eps * r
        if kind == "dropout":
            return F.dropout2d(z, cfg.dropout_rate, training=True)
        if kind == "cutout":
            return guided_cutout(z, fg, 1, cfg.cutout_erase, cfg.cutout_min_area, cfg.cutout_max_objects)[0]
        if kind == "context_mask":
            return context_masking(z, fg, 1)[0]
        if kind == "object_mask":
            return object_masking(z, fg, 1)[0]
        if kind == "feature_drop":
            return feature_drop(z, 1, tuple(cfg.feature_drop_gamma))[0]  # type: ignore[arg-type]
        return feature_noise(z, 1, cfg.feature_noise_range)[0]

    def forward(self, images_l: Tensor, images_u: Tensor) -> dict[str, Tensor]:
        logits_l = self.net.decode(self.net.encode(images_l))
        z = self.net.encode(images_u)
        with torch.no_grad():
            target = F.softmax(self.net.decode(z), dim=1)
        fg = foreground_mask(target, tuple(z.shape[-2:]), self.background)
        losses = [
            softmax_mse_loss(dec(self._perturb(kind, dec, z, fg)), target) for kind, dec in zip(self.kinds, self.aux)
        ]
        return {"logits_l": logits_l, "loss_u": sum(losses) / len(losses)}


def build(args: argparse.Namespace, impl: str, cfg: PerturbationsConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    net = build_segmentation_model(
        args.encoder, args.classes, output_stride=8, psp=not args.no_psp, deep_stem=args.deep_stem
    )
    model = CCTModel(net, cfg) if impl == "stacked" else LoopCCT(net, cfg)
    return model.to(device).train()


def make_step(model: nn.Module, args: argparse.Namespace, device: torch.device) -> Callable[[bool], float]:
    """A closure running one training step; with ``measure=True`` it returns the MB of tensors that autograd
    saves for the backward pass (unique storages), else 0."""
    g = torch.Generator().manual_seed(1)
    x_l = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    x_u = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=g).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(measure: bool = False) -> float:
        storages: dict[int, int] = {}
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(t: Tensor) -> Tensor:
            st = t.untyped_storage()
            if st.data_ptr() not in params:  # parameters exist anyway; count activations only
                storages[st.data_ptr()] = st.nbytes()
            return t

        ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if measure else nullcontext()
        with ctx:
            out = model(x_l, x_u)
            loss = F.cross_entropy(out["logits_l"], y, ignore_index=255) + 30.0 * out["loss_u"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return sum(storages.values()) / 2**20

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cuda_peak_mb(step: Callable[[bool], float]) -> float:
    """Peak GPU memory of one step beyond what is allocated before it."""
    step(False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(False)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="resnet18", help="small_cnn, resnet18, resnet34, resnet50")
    p.add_argument("--deep-stem", action="store_true")
    p.add_argument("--no-psp", action="store_true")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--batch", type=int, default=2, help="labeled and unlabeled images each")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--skip-loop", action="store_true", help="only the stacked implementation")
    p.add_argument("--no-memory", action="store_true")
    args = p.parse_args(argv)
    keep_freed_memory()  # as the training engine does on CPU (fewlabels.engine.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = ["stacked"] if args.skip_loop else ["stacked", "loop"]
    configs = {(impl, k): cfg for impl in impls for k, cfg in ((30, K30), (1, K1))}
    steps = {key: make_step(build(args, key[0], cfg, device), args, device) for key, cfg in configs.items()}
    wall: dict[tuple[str, int], list[float]] = {key: [] for key in steps}
    cpu: dict[tuple[str, int], list[float]] = {key: [] for key in steps}
    for step in steps.values():  # warm-up (allocator, thread pools, autograd graph caches)
        step(False)
    sync(device)
    for _ in range(args.repeats):
        for key, step in steps.items():  # interleaved, so that machine noise hits every configuration alike
            t0, c0 = time.perf_counter(), time.process_time()
            step(False)
            sync(device)
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
    med = {key: statistics.median(v) for key, v in wall.items()}
    med_cpu = {key: statistics.median(v) for key, v in cpu.items()}
    result: dict[str, float] = {}
    print(
        f"device={device} encoder={args.encoder} psp={not args.no_psp} classes={args.classes} "
        f"batch={args.batch}+{args.batch} size={args.size} threads={torch.get_num_threads()} "
        f"repeats={args.repeats}",
        flush=True,
    )
    for (impl, k), t in med.items():
        spread = f"[{min(wall[(impl, k)]):.3f}..{max(wall[(impl, k)]):.3f}]"
        line = f"{impl:8s} K={k:2d}: wall median {t:.3f} s/step {spread}, process CPU {med_cpu[(impl, k)]:.3f} s"
        result[f"{impl}_k{k}_s"] = round(t, 4)
        result[f"{impl}_k{k}_cpu_s"] = round(med_cpu[(impl, k)], 4)
        if not args.no_memory:
            if device.type == "cuda":
                mb = cuda_peak_mb(steps[(impl, k)])
                line += f", peak step memory {mb:.0f} MB"
                result[f"{impl}_k{k}_peak_mb"] = round(mb, 1)
            else:
                mb = steps[(impl, k)](True)
                line += f", saved for backward {mb:.0f} MB"
                result[f"{impl}_k{k}_saved_mb"] = round(mb, 1)
        print(line, flush=True)
    result["k30_over_k1"] = round(med[("stacked", 30)] / med[("stacked", 1)], 4)
    result["k30_over_k1_cpu"] = round(med_cpu[("stacked", 30)] / med_cpu[("stacked", 1)], 4)
    if not args.skip_loop:
        result["loop_k30_over_k1"] = round(med[("loop", 30)] / med[("loop", 1)], 4)
        result["loop_k30_over_k1_cpu"] = round(med_cpu[("loop", 30)] / med_cpu[("loop", 1)], 4)
        result["loop_k30_over_stacked_k30"] = round(med[("loop", 30)] / med[("stacked", 30)], 4)
    sys.stdout.flush()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
