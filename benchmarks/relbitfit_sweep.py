"""Dev-selected comparison of full fine-tuning, BitFit and RelBitFit on the embedded Rotten Tomatoes (MiniLM-L6).

    python benchmarks/relbitfit_sweep.py --n 100 500 --seeds 0 1 2 --out runs/relbitfit_sweep

Protocol, per training-set size N and variant:
1. grid: every learning rate of the variant (``--lr-full``, ``--lr-bias``) x every budget in epochs
   (``--epochs-full``, ``--epochs-bias``), on ``--grid-seed`` only. Each run carves its dev split from the
   training pool (``data.dev_size``, seeded, disjoint from the N training snippets), evaluates it
   ``--evals-per-run`` times and keeps the best checkpoint on it; the test set is not looked at.
2. choice: the grid cell with the best dev score (ties: the smaller learning rate, then the shorter budget).
3. seeds: the chosen setting on every seed of ``--seeds`` (the grid run is reused for the grid seed); the
   dev-selected checkpoint of each run is scored once on the held-out test snippets.

Resumable: every finished run writes ``OUT/cells/<name>.json`` and is skipped when the script runs again (with the
same arguments); a run that was stopped halfway resumes from its last checkpoint (its wall time so far is kept in
``spent.json``). Variants are independent, so several processes may share one OUT, each with its own
``--variants`` (a last run with all of them only reads the records).
Prints a markdown table of test accuracy (mean, std over seeds), the paired differences between variants with
their 95 % t intervals, the trained parameters and the training wall time, and a JSON object as the last stdout
line.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: display name -> model options
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"variant": "full"},
    "bitfit": {"variant": "bitfit"},
    "relbitfit": {"variant": "relbitfit"},
    "relbitfit+pt+lr+clip": {"variant": "relbitfit", "pt": True, "lr": True, "clip": True},
}

#: paired differences reported (a - b)
PAIRS: tuple[tuple[str, str], ...] = (
    ("relbitfit", "bitfit"),
    ("relbitfit+pt+lr+clip", "bitfit"),
    ("bitfit", "full"),
    ("relbitfit", "full"),
)


def run_config(args: argparse.Namespace, n: int, variant: str, lr: float, epochs: float, seed: int) -> dict[str, Any]:
    """The run config of one grid cell (a plain mapping for ``config_from_dict``)."""
    per_pass = max(1, n // args.batch_size)
    steps = max(1, math.ceil(epochs * per_pass))
    every = max(1, math.ceil(steps / args.evals_per_run))
    return {
        "method": "relbitfit",
        "seed": seed,
        "model": {**VARIANTS[variant], "head": args.head},
        "data": {
            "dataset": "rotten-tomatoes",
            "n_train": n,
            "dev_size": args.dev_size,
            "max_length": args.max_length,
            "max_eval": args.max_eval,
            "eval_test": False,  # selection sees only the dev split; the test is scored once, afterwards
        },
        "train": {
            "epochs": epochs,
            "batch_size": args.batch_size,
            "lr": lr,
            "warmup_ratio": args.warmup_ratio,
            "eval_every": every,
            "checkpoint_every": every,
            "log_every": every,
            "device": "cpu",
        },
    }


def cell_name(n: int, variant: str, lr: float, epochs: float, seed: int) -> str:
    return f"n{n}-{variant.replace('+', '_')}-lr{lr:g}-ep{epochs:g}-seed{seed}"


def run_cell(args: argparse.Namespace, n: int, variant: str, lr: float, epochs: float, seed: int) -> dict[str, Any]:
    """Train one cell (or read its finished record) and return ``{dev, best_step, steps, train_s, ...}``."""
    out = Path(args.out)
    name = cell_name(n, variant, lr, epochs, seed)
    record_path = out / "cells" / f"{name}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    from fewlabels.engine import read_run_config, train
    from fewlabels.engine.checkpoint import list_checkpoints
    from fewlabels.registry import config_from_dict

    run_dir = out / "runs" / name
    spent = json.loads((run_dir / "spent.json").read_text())["train_s"] if (run_dir / "spent.json").is_file() else 0.0
    print(f"== {name}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        if list_checkpoints(run_dir / "checkpoints"):  # a run stopped halfway: continue it from its last checkpoint
            result = train(read_run_config(run_dir), run_dir)
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            data = run_config(args, n, variant, lr, epochs, seed)
            result = train(config_from_dict({**data, "name": name, "output_dir": str(out / "runs")}))
    finally:  # wall time of the interrupted parts counts too
        if run_dir.is_dir():
            (run_dir / "spent.json").write_text(json.dumps({"train_s": spent + time.perf_counter() - t0}))
    train_s = spent + time.perf_counter() - t0
    best = json.loads((result.run_dir / "best.json").read_text())
    # Keep only what scoring needs: the dev-selected weights (a delta for the bias methods) and the config.
    shutil.rmtree(result.run_dir / "checkpoints", ignore_errors=True)
    (result.run_dir / "model.safetensors").unlink(missing_ok=True)
    record = {
        "n": n,
        "variant": variant,
        "lr": lr,
        "epochs": epochs,
        "seed": seed,
        "dev": best["score"],
        "best_step": best["step"],
        "steps": result.steps,
        "train_s": round(train_s, 1),
        "run_dir": str(result.run_dir),
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2))
    return record


def score_test(args: argparse.Namespace, record: dict[str, Any]) -> dict[str, Any]:
    """Add the test accuracy of the run's dev-selected checkpoint and its trained-parameter count (cached)."""
    if "test" in record:
        return record
    from fewlabels.engine import load_run
    from fewlabels.metrics import accuracy

    run = load_run(record["run_dir"], which="best", device="cpu", overrides=["data.eval_test=true"])
    dataset = run.method.eval_sets(include_test=True)["test"]
    t0 = time.perf_counter()
    logits = run.method.predict_logits(run.model, dataset, run.device)
    record["test"] = float(accuracy(logits.argmax(-1), dataset.labels))
    record["test_s"] = round(time.perf_counter() - t0, 1)
    record["trainable"] = int(sum(p.numel() for p in run.model.parameters() if p.requires_grad))
    name = Path(record["run_dir"]).name
    (Path(args.out) / "cells" / f"{name}.json").write_text(json.dumps(record, indent=2))
    print(f"{name}: dev {record['dev']:.4f} test {record['test']:.4f}", flush=True)
    return record


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, sample std, 95 % Student-t half-width); NaN spread for one value."""
    from fewlabels.metrics import mean_confidence_interval

    if len(values) < 2:
        return float(values[0]), float("nan"), float("nan")
    mean, half = mean_confidence_interval(values)
    return float(mean), float(np.std(values, ddof=1)), float(half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grid-seed", type=int, default=0)
    parser.add_argument("--lr-full", type=float, nargs="+", default=[2e-5, 5e-5, 1e-4])
    parser.add_argument("--lr-bias", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--epochs-full", type=float, nargs="+", default=[10.0])
    parser.add_argument("--epochs-bias", type=float, nargs="+", default=[20.0])
    parser.add_argument("--head", default="pooler", choices=["pooler", "cls", "mean"], help="model.head of every run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--dev-size", type=int, default=500)
    parser.add_argument("--max-eval", type=int, default=0, help="test snippets scored (0 = all 2000)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--evals-per-run", type=int, default=5, help="dev evaluations (checkpoints) per run")
    parser.add_argument("--grid-only", action="store_true", help="stop after the grid and the choice")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); on a shared CPU, one process per variant with 1 thread each",
    )
    parser.add_argument("--out", default="runs/relbitfit_sweep")
    args = parser.parse_args()

    import torch

    from fewlabels.engine.allocator import keep_freed_memory

    keep_freed_memory()  # as the CLI does for CPU training
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    chosen: dict[tuple[int, str], tuple[float, float]] = {}
    grid: list[dict[str, Any]] = []
    for n in args.n:
        for variant in args.variants:
            full = variant == "full"
            cells = [
                run_cell(args, n, variant, lr, ep, args.grid_seed)
                for lr in (args.lr_full if full else args.lr_bias)
                for ep in (args.epochs_full if full else args.epochs_bias)
            ]
            grid += cells
            best = max(cells, key=lambda c: (c["dev"], -c["lr"], -c["epochs"]))
            chosen[(n, variant)] = (best["lr"], best["epochs"])
            print(f"N={n} {variant}: dev-selected lr {best['lr']:g}, {best['epochs']:g} epochs", flush=True)
    print("\n| N | variant | lr | epochs | dev accuracy (grid seed) | best step / steps | train s |")
    print("|---|---|---|---|---|---|---|")
    for c in grid:
        mark = " **" if chosen[(c["n"], c["variant"])] == (c["lr"], c["epochs"]) else ""
        print(
            f"| {c['n']} | {c['variant']} | {c['lr']:g}{mark} | {c['epochs']:g} | {c['dev']:.3f} | "
            f"{c['best_step']} / {c['steps']} | {c['train_s']:.0f} |"
        )
    if args.grid_only:
        return

    results: dict[tuple[int, str], dict[int, dict[str, Any]]] = {}
    for n in args.n:
        for seed in args.seeds:
            for variant in args.variants:
                lr, ep = chosen[(n, variant)]
                record = score_test(args, run_cell(args, n, variant, lr, ep, seed))
                results.setdefault((n, variant), {})[seed] = record

    summary: dict[str, Any] = {"chosen": {}, "test": {}, "pairs": {}}
    print("\n| N | variant | lr, epochs (dev) | trained parameters | test accuracy mean +- std | per seed | train s |")
    print("|---|---|---|---|---|---|---|")
    for (n, variant), by_seed in results.items():
        values = [by_seed[s]["test"] for s in args.seeds]
        mean, std, half = t_interval(values)
        seconds = [by_seed[s]["train_s"] for s in args.seeds]
        lr, ep = chosen[(n, variant)]
        trainable = by_seed[args.seeds[0]]["trainable"]
        print(
            f"| {n} | {variant} | {lr:g}, {ep:g} | {trainable:,} | {mean:.3f} +- {std:.3f} | "
            f"{' / '.join(f'{v:.3f}' for v in values)} | {np.mean(seconds):.0f} |"
        )
        key = f"N={n} {variant}"
        summary["chosen"][key] = {"lr": lr, "epochs": ep}
        summary["test"][key] = {
            "mean": mean,
            "std": std,
            "ci95": half,
            "values": values,
            "trainable": trainable,
            "train_s": seconds,
        }
    print("\n| N | difference (paired by seed) | mean | 95 % CI | per seed |")
    print("|---|---|---|---|---|")
    for n in args.n:
        for a, b in PAIRS:
            if (n, a) not in results or (n, b) not in results:
                continue
            diffs = [results[(n, a)][s]["test"] - results[(n, b)][s]["test"] for s in args.seeds]
            mean, _, half = t_interval(diffs)
            print(
                f"| {n} | {a} - {b} | {mean:+.3f} | [{mean - half:+.3f}, {mean + half:+.3f}] | "
                f"{' / '.join(f'{d:+.3f}' for d in diffs)} |"
            )
            summary["pairs"][f"N={n} {a} - {b}"] = {"mean": mean, "ci95": half, "values": diffs}
    print(json.dumps(summary))


if __name__ == "__main__":
    from fewlabels.engine import TrainingInterrupted

    try:
        main()
    except TrainingInterrupted as stop:  # the whole sweep stops; run it again with the same arguments to go on
        print(f"relbitfit_sweep: {stop}; the sweep stopped, run it again to resume", file=sys.stderr)
        sys.exit(stop.exit_code)
