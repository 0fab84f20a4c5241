"""Training-step time of RelBitFit relative to BitFit, and the size of the saved delta.

One step = forward + backward + AdamW update of the trainable tensors, on the packaged MiniLM-L6 BERT with the
same batch (default 8 x 128 tokens, no padding, so every position pays the relative terms). The variants are
timed in alternating rounds in one process and the reported ratio is the median over rounds of the paired ratio
(RelBitFit round time / the BitFit round just before it), which cancels the slow drifts of a shared machine.
Both wall-clock and process CPU time are measured; with ``--threads 1`` the CPU-time ratio is the least noisy.
The last stdout line is a JSON object with ``relbitfit_over_bitfit`` (target <= 1.15, wall clock) and
``delta_bytes`` (the RelBitFit delta file).

    python benchmarks/relbitfit_step.py [--batch 8] [--length 128] [--steps 2] [--rounds 6] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(variant: str, attn: str):
    from transformers import AutoModelForSequenceClassification

    from fewlabels.data.text import minilm_path
    from fewlabels.methods.relbitfit.variants import FineTuning, apply_fine_tuning

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(minilm_path()), num_labels=2, attn_implementation=attn
    )
    fine_tuning = FineTuning.parse(variant, num_positions=128)
    model = apply_fine_tuning(model, fine_tuning).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    return model, optimizer, fine_tuning


def time_steps(model, optimizer, batch, steps: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per step."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--variants", nargs="+", default=["bitfit", "relbitfit"])
    args = parser.parse_args()
    from fewlabels.engine.allocator import keep_freed_memory

    keep_freed_memory()  # as the training engine does on CPU (fewlabels.engine.allocator)
    if "bitfit" not in args.variants or "relbitfit" not in args.variants:
        parser.error("--variants must include bitfit and relbitfit (the reported ratio)")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 30000, (args.batch, args.length), generator=g),
        "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch,), generator=g),
    }
    runs = {v: build(v, args.attn) for v in args.variants}
    for model, optimizer, _ in runs.values():
        time_steps(model, optimizer, batch, 1)  # warm-up: allocator, optimizer state
    wall: dict[str, list[float]] = {v: [] for v in args.variants}
    cpu: dict[str, list[float]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for variant, (model, optimizer, _) in runs.items():
            w, c = time_steps(model, optimizer, batch, args.steps)
            wall[variant].append(w)
            cpu[variant].append(c)
    step_s = {v: statistics.median(t) for v, t in wall.items()}
    cpu_s = {v: statistics.median(t) for v, t in cpu.items()}

    def paired(times: dict[str, list[float]], variant: str) -> float:
        return statistics.median(a / b for a, b in zip(times[variant], times["bitfit"]))

    from fewlabels.methods.relbitfit.delta import save_delta

    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, (model, _, fine_tuning) in runs.items():
            path = save_delta(model, Path(tmp) / f"{variant}.safetensors", fine_tuning, ["classifier.weight"])
            sizes[variant] = path.stat().st_size

    threads = torch.get_num_threads()
    print(f"MiniLM-L6, batch {args.batch} x {args.length} tokens, attention {args.attn}, {threads} threads")
    print(f"{'variant':<24}{'step (s)':>10}{'cpu (s)':>10}{'wall ratio':>12}{'cpu ratio':>11}{'delta (bytes)':>15}")
    for variant in args.variants:
        print(
            f"{variant:<24}{step_s[variant]:>10.3f}{cpu_s[variant]:>10.3f}{paired(wall, variant):>12.3f}"
            f"{paired(cpu, variant):>11.3f}{sizes[variant]:>15,}"
        )
    summary = {
        "relbitfit_over_bitfit": round(paired(wall, "relbitfit"), 4),
        "relbitfit_over_bitfit_cpu_time": round(paired(cpu, "relbitfit"), 4),
        "bitfit_step_s": round(step_s["bitfit"], 4),
        "relbitfit_step_s": round(step_s["relbitfit"], 4),
        "delta_bytes": sizes["relbitfit"],
        "bitfit_delta_bytes": sizes["bitfit"],
        "batch": args.batch,
        "length": args.length,
        "attn": args.attn,
        "device": "cpu",
        "threads": threads,
        "rounds": args.rounds,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
