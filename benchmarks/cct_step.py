"""Time one CCT training step at K = 30 and K = 1 auxiliary decoders, for the stacked implementation and for a
straightforward one-decoder-at-a-time loop (K separate decoder modules, K separate loss calls).

Usage::

    python benchmarks/cct_step.py            # the reference model and ResNet-18, both OS8 + PSP, 21 classes, CPU
    python benchmarks/cct_step.py --models resnet18          # only ResNet-18 (with the loop)
    python benchmarks/cct_step.py --encoder resnet34         # one other encoder instead of the presets
    python benchmarks/cct_step.py --counts feature_noise=0 vat=4   # K = 30 config with other counts per type
    python benchmarks/cct_step.py --device cuda --batch 8 --size 320
    python benchmarks/cct_step.py --flops-only   # the FLOP counts and ratios only (deterministic, no timing)
    python benchmarks/cct_step.py --threads 1 --breakdown   # + the aux work split into matrix products and the rest

Two models are timed by default, one after the other: the reference model of CCT.md (ResNet-50 deep stem, OS8 +
PSP), whose ``k30_over_k1`` is the issue's target (<= 1.10), and ResNet-18 + PSP, where the loop is timed too
(``resnet18_`` keys). A step is: forward (labeled + unlabeled), CE + w_u * L_u, backward, SGD update.

On a CPU with more than one torch thread, the fused stages of the K = 30 model split the decoders over worker
threads, one group per thread (``workers`` of :func:`~fewlabels.methods.cct.fused.stages_value_and_grad`). A third
configuration, ``serial`` (K = 30, the stages decoded in the calling thread), is timed with the others, and
``serial_k30_over_stacked_k30`` is what the split saves.

Stability: after a warm-up, the configurations of a model are run interleaved within every repeat, each repeat in
a rotated order (so that no configuration always follows the same one), and a ratio such as ``k30_over_k1`` is the
median over the repeats of the ratio of the two times measured in that repeat. Machine noise that lasts a repeat
hits both sides of the ratio alike. Medians of the wall time and of the process CPU time (less sensitive to other
jobs on a shared machine) are reported too. Memory: on a GPU the peak ``torch.cuda.max_memory_allocated`` of a
step; on the CPU (where torch's allocations are invisible to tracemalloc) the size of the tensors autograd saves
for the backward pass (unique storages, parameters excluded), which is what grows with K.

FLOPs: the matmul and convolution FLOPs of one step of each configuration (torch's ``FlopCounterMode``) and their
ratio (``k30_over_k1_flops``), the time ratio a machine would show if the aux decoders' small products (inner
dimension = the class count) ran as fast as the encoder's convolutions. On a CPU they run several times slower, so
the wall ratio is above the FLOP ratio; the gap is what an implementation can still win.

Breakdown (``--breakdown``, one thread): the matrix products of a step (``MATMUL_OPS``: the aux decoders' first
layer, their pixel-shuffle stages and VAT's projections are all ``mm``/``bmm``/``baddbmm``) are timed in place by
torch's profiler (their self CPU time, summed over the profiled steps), and the wall time that K = 30 adds to a step
is split into its matrix products and the rest. ``k30_over_k1_matmul_floor`` is the ratio the step would reach if
everything else the aux decoders do (perturbations, softmax, the loss's element-wise passes, Python) cost nothing:
``(t_1 + mm_30 - mm_1) / t_1``. Where it is above a target, no rewrite of the element-wise work can meet that target
at the same precision; only faster products (another GEMM, lower precision) can.

Both implementations take the perturbation types from the registry
(:func:`~fewlabels.methods.cct.perturbations.registered_perturbations`): a newly registered type is timed as soon
as its count is above 0 (its config default, or ``--counts``). The last stdout line is a JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from fewlabels.engine.allocator import keep_freed_memory
from fewlabels.methods.cct.config import PerturbationsConfig
from fewlabels.methods.cct.decoders import StackedUpsampleDecoders
from fewlabels.methods.cct.losses import softmax_mse_loss
from fewlabels.methods.cct.model import CCTModel
from fewlabels.methods.cct.perturbations import Perturbation, PerturbationInput, registered_perturbations
from fewlabels.models import SegmentationNet, build_segmentation_model


@dataclass(frozen=True)
class ModelSpec:
    """One network to time: its encoder, stem and PSP, whether the loop is timed on it, and its key prefix."""

    encoder: str
    deep_stem: bool
    psp: bool
    loop: bool
    prefix: str

    def describe(self) -> str:
        stem = " deep stem" if self.deep_stem else ""
        return f"{self.encoder}{stem} OS8{' + PSP' if self.psp else ''}"


#: the models timed by default: the reference model (the target's, unprefixed keys) and ResNet-18 with the loop
PRESETS: dict[str, ModelSpec] = {
    "reference": ModelSpec("resnet50", deep_stem=True, psp=True, loop=False, prefix=""),
    "resnet18": ModelSpec("resnet18", deep_stem=False, psp=True, loop=True, prefix="resnet18_"),
}


def k1_config() -> PerturbationsConfig:
    """One channel-dropout decoder, every registered type's count set to 0 (K = 1)."""
    counts = {p.count_field: 0 for p in registered_perturbations()}
    return dataclasses.replace(PerturbationsConfig(), **{**counts, "dropout": 1})


def k30_config(overrides: list[str]) -> PerturbationsConfig:
    """The default counts (2 + 6 + 6 + 2 + 2 + 6 + 6 = 30), with ``NAME=N`` overrides of registered types."""
    fields = {p.name: p.count_field for p in registered_perturbations()}
    counts: dict[str, int] = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in fields or not value.isdigit():
            raise SystemExit(f"--counts takes NAME=N with NAME one of {', '.join(fields)}; got {item!r}")
        counts[fields[name]] = int(value)
    cfg = dataclasses.replace(PerturbationsConfig(), **counts)
    if cfg.total < 1:
        raise SystemExit("--counts leaves no aux decoder")
    return cfg


class LoopCCT(nn.Module):
    """The reference's structure: a list of K decoder modules, each perturbing ``z`` and decoding alone, and K
    separate loss calls. Decoder k is a stack of one (:class:`StackedUpsampleDecoders`, the layers of an
    ``UpsampleDecoder``); its perturbed input is its type's :meth:`~Perturbation.copies` with ``n = 1``, the type
    taken from the registry as in :class:`CCTModel`, reading that one decoder as ``inputs.aux`` (I-VAT's power
    iteration runs through it). Same perturbations and losses as :class:`CCTModel`."""

    def __init__(self, net: SegmentationNet, cfg: PerturbationsConfig, background: tuple[int, ...] = (0,)) -> None:
        super().__init__()
        self.net, self.cfg, self.background = net, cfg, background
        self.kinds: list[Perturbation] = [p for p in registered_perturbations() for _ in range(p.count(cfg))]
        d, c, up = net.feature_channels, net.num_classes, net.output_stride
        self.aux = nn.ModuleList(StackedUpsampleDecoders(1, d, c, up) for _ in self.kinds)

    def forward(self, images_l: Tensor, images_u: Tensor) -> dict[str, Tensor]:
        logits_l = self.net.decode(self.net.encode(images_l))
        z = self.net.encode(images_u)
        with torch.no_grad():
            target = F.softmax(self.net.decode(z), dim=1)
        inputs = PerturbationInput(z, target, self.cfg, self.background, self.aux[0], None)  # foreground once
        losses = []
        for perturbation, decoder in zip(self.kinds, self.aux, strict=True):
            inputs.aux = decoder
            logits = decoder(perturbation.copies(inputs, 1, slice(0, 1)))[0]
            losses.append(softmax_mse_loss(logits, target))
        return {"logits_l": logits_l, "loss_u": sum(losses) / len(losses)}


def build(args: argparse.Namespace, spec: ModelSpec, impl: str, cfg: PerturbationsConfig) -> nn.Module:
    torch.manual_seed(0)
    net = build_segmentation_model(spec.encoder, args.classes, output_stride=8, psp=spec.psp, deep_stem=spec.deep_stem)
    if impl == "loop":
        return LoopCCT(net, cfg).to(args.device).train()
    model = CCTModel(net, cfg, fused_workers=1 if impl == "serial" else None)
    return model.to(args.device).train()


def make_step(model: nn.Module, args: argparse.Namespace) -> Callable[[bool], float]:
    """A closure running one training step; with ``measure=True`` it returns the MB of tensors that autograd
    saves for the backward pass (unique storages), else 0."""
    g = torch.Generator().manual_seed(1)
    x_l = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(args.device)
    x_u = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(args.device)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=g).to(args.device)
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


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul and convolution FLOPs (2 per multiply-add) of one call of ``fn``, forward and backward, as torch's
    ``FlopCounterMode`` counts them; element-wise work (softmax, masks, optimizer) is not counted."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


#: the matrix products of a CCT step outside the encoder's convolutions (``--breakdown``)
MATMUL_OPS = frozenset({"aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm", "aten::addbmm"})


def matmul_seconds(step: Callable[[bool], float], steps: int) -> float:
    """Self CPU seconds a step spends in :data:`MATMUL_OPS`, torch's profiler over ``steps`` steps (one thread)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(False)
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) / 1e6 / steps


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


Key = tuple[str, int]


def rotated(keys: list[Key], r: int) -> list[Key]:
    """The order of repeat ``r``: ``keys`` rotated by ``r``, so that every configuration takes every position."""
    shift = r % len(keys)
    return keys[shift:] + keys[:shift]


def time_model(args: argparse.Namespace, spec: ModelSpec, configs: dict[int, PerturbationsConfig]) -> dict[str, float]:
    """Time the configurations of one model interleaved; print one line each; return its prefixed figures."""
    impls = ["stacked", "loop"] if spec.loop and not args.skip_loop else ["stacked"]
    keys = [(impl, k) for impl in impls for k in configs]
    big, one = max(configs), min(configs)
    if args.device.type == "cpu" and torch.get_num_threads() > 1:
        keys.append(("serial", big))  # the fused stages in the calling thread: what the worker split saves
    steps = {key: make_step(build(args, spec, key[0], configs[key[1]]), args) for key in keys}
    wall: dict[Key, list[float]] = {key: [] for key in keys}
    cpu: dict[Key, list[float]] = {key: [] for key in keys}
    for step in steps.values():  # warm-up (allocator, thread pools, autograd graph caches)
        step(False)
    sync(args.device)
    # FLOPs of one step of each configuration: the ratio the timing would show if every op ran at one speed
    flops = {key: count_flops(lambda s=steps[key]: s(False)) for key in keys}
    for r in range(0 if args.flops_only else args.repeats):
        for key in rotated(keys, r):  # interleaved, so that machine noise hits every configuration alike
            t0, c0 = time.perf_counter(), time.process_time()
            steps[key](False)
            sync(args.device)
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
    print(f"{spec.describe()}, K = {configs[max(configs)].counts}", flush=True)
    out: dict[str, float] = {}
    for key in keys:
        impl, k = key
        out[f"{impl}_k{k}_gflop"] = round(flops[key] / 1e9, 3)
        line = f"  {impl:8s} K={k:2d}: {flops[key] / 1e9:.2f} GFLOP (matmul + conv, forward + backward)"
        if wall[key]:
            t, c = statistics.median(wall[key]), statistics.median(cpu[key])
            spread = f"[{min(wall[key]):.3f}..{max(wall[key]):.3f}]"
            line += f", wall median {t:.3f} s/step {spread}, process CPU {c:.3f} s"
            out[f"{impl}_k{k}_s"], out[f"{impl}_k{k}_cpu_s"] = round(t, 4), round(c, 4)
        if not args.no_memory:
            if args.device.type == "cuda":
                mb = cuda_peak_mb(steps[key])
                line += f", peak step memory {mb:.0f} MB"
                out[f"{impl}_k{k}_peak_mb"] = round(mb, 1)
            else:
                mb = steps[key](True)
                line += f", saved for backward {mb:.0f} MB"
                out[f"{impl}_k{k}_saved_mb"] = round(mb, 1)
        print(line, flush=True)

    def ratio(a: Key, b: Key, times: dict[Key, list[float]]) -> float:
        """The median over the repeats of the per-repeat ratio a / b."""
        return round(statistics.median(x / y for x, y in zip(times[a], times[b], strict=True)), 4)

    ratios = {"k30_over_k1": (("stacked", big), ("stacked", one))}
    if ("serial", big) in keys:
        ratios["serial_k30_over_stacked_k30"] = (("serial", big), ("stacked", big))
    if "loop" in impls:
        ratios["loop_k30_over_k1"] = (("loop", big), ("loop", one))
        ratios["loop_k30_over_stacked_k30"] = (("loop", big), ("stacked", big))
    if args.breakdown and wall[("stacked", big)]:
        # one thread (checked in main): the stacked K = 30 model decodes its stages in the calling thread
        mm = {k: matmul_seconds(steps[("stacked", k)], args.repeats) for k in (big, one)}
        t_big, t_one = statistics.median(wall[("stacked", big)]), statistics.median(wall[("stacked", one)])
        added, added_mm = t_big - t_one, mm[big] - mm[one]
        out[f"matmul_k{big}_ms"], out[f"matmul_k{one}_ms"] = round(mm[big] * 1e3, 2), round(mm[one] * 1e3, 2)
        out[f"k{big}_added_ms"], out[f"k{big}_added_matmul_ms"] = round(added * 1e3, 2), round(added_mm * 1e3, 2)
        out["k30_over_k1_matmul_floor"] = round((t_one + added_mm) / t_one, 4)
        print(
            f"  K={big} adds {added * 1e3:.1f} ms a step: {added_mm * 1e3:.1f} ms of matrix products "
            f"({mm[big] * 1e3:.1f} vs {mm[one] * 1e3:.1f} ms), {(added - added_mm) * 1e3:.1f} ms of everything else; "
            f"with everything else free the ratio would be {out['k30_over_k1_matmul_floor']:.3f}",
            flush=True,
        )
    for name, (a, b) in ratios.items():
        out[f"{name}_flops"] = round(flops[a] / flops[b], 4)
        line = f"  {name}: FLOPs {out[f'{name}_flops']:.3f}"
        if wall[a]:
            out[name], out[f"{name}_cpu"] = ratio(a, b, wall), ratio(a, b, cpu)
            line += f", wall {out[name]:.3f} (process CPU {out[f'{name}_cpu']:.3f}), median of per-repeat ratios"
        print(line, flush=True)
    return {f"{spec.prefix}{key}": value for key, value in out.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(PRESETS), choices=list(PRESETS), help="presets to time")
    p.add_argument("--encoder", default=None, help="time this encoder instead of the presets (with the loop)")
    p.add_argument("--deep-stem", action="store_true", help="with --encoder")
    p.add_argument("--no-psp", action="store_true", help="with --encoder")
    p.add_argument("--counts", nargs="+", default=[], metavar="NAME=N", help="counts of the K = 30 config")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--batch", type=int, default=2, help="labeled and unlabeled images each")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--skip-loop", action="store_true", help="only the stacked implementation")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--flops-only", action="store_true", help="count the FLOPs of a step, time nothing")
    p.add_argument("--breakdown", action="store_true", help="split the added time into matrix products and the rest")
    args = p.parse_args(argv)
    if args.breakdown and (args.threads != 1 or args.device != "cpu" or args.flops_only):
        raise SystemExit("--breakdown profiles the CPU at one thread: add --threads 1 (and no --device, --flops-only)")
    keep_freed_memory()  # as the training engine does on CPU (fewlabels.engine.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = torch.device(args.device)
    if args.encoder:
        specs = [ModelSpec(args.encoder, args.deep_stem, not args.no_psp, loop=True, prefix="")]
    else:
        specs = [PRESETS[name] for name in args.models]
    k30 = k30_config(args.counts)
    if k30.total == 1:
        raise SystemExit("--counts: the large config needs more than one aux decoder (it is timed against K = 1)")
    print(
        f"device={args.device} classes={args.classes} batch={args.batch}+{args.batch} size={args.size} "
        f"threads={torch.get_num_threads()} repeats={args.repeats}",
        flush=True,
    )
    result: dict[str, float] = {}
    for spec in specs:
        result.update(time_model(args, spec, {k30.total: k30, 1: k1_config()}))
    sys.stdout.flush()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
