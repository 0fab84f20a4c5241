"""AC's views on the embedded ``scenes`` data: raster orderings (AC, mask-free and 8-ordering ensemble inference), the
IIC baseline (augmented views), and the thesis' open question -- random (non-raster) orderings and dropout views.

Every variant trains the same network with the same loss, data, seed and budget (the demo's AC recipe: 64 x 64
crops of 300 generated 96 x 96 scenes, widths 16/32, one decoder block, k = 6, T = 3, uncollapsed loss, Adam 1e-3,
batch 8, ``--steps`` steps), through the training engine. Each trained network is evaluated with Hungarian matching
on all 300 scenes, whole 96 x 96 images (``data.eval_input_size=96``; labels only to evaluate), and once more with
the demo's protocol (centre 64 x 64 crops of the first 100 scenes) so the demo table can be compared.

    python benchmarks/ac_views.py --seeds 0 1 2                 # all variants
    python benchmarks/ac_views.py --seeds 0 --variants ac iic   # a subset

Prints one line per (variant, evaluation, seed), then per evaluation mean, sample std and 95% CI over seeds, and
the paired difference of each variant with AC (mask-free) with its Student-t 95% CI. The last stdout line is a
JSON object. Not part of ``make bench`` (minutes per run); docs/results.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _seeds import SeedTable, summarise, train_run  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "ac": {"model": {"mask_from": "features"}},
    "iic": {"model": {"mask_from": "none"}, "views": {"jitter": 0.3, "flip": True}},
    "random": {"model": {"mask_from": "features"}, "views": {"kind": "random"}},
    "dropout": {"model": {"mask_from": "features"}, "views": {"kind": "dropout", "dropout": 0.2}},
}


def recipe(seed: int, steps: int, variant: str) -> dict[str, Any]:
    """The demo's AC recipe with whole-image evaluation on every scene, plus the variant's sections."""
    extra = VARIANTS[variant]
    return {
        "method": "ac",
        "seed": seed,
        "model": {"widths": [16, 32], "decoder_blocks": 1, "k": 6, "k_over": 0, **extra.get("model", {})},
        "loss": {"displacement": 3, "lamb": 1.0, "collapsed": False},
        "views": extra.get("views", {}),
        "data": {
            "dataset": "scenes",
            "scenes_n": 300,
            "scenes_size": 96,
            "input_size": 64,
            "eval_input_size": 96,
            "eval_images": 0,
        },
        "train": {
            "steps": steps,
            "batch_size": 8,
            "optimizer": "adam",
            "lr": 0.001,
            "weight_decay": 0.0,
            "scheduler": "constant",
            "eval_every": steps,
            "checkpoint_every": steps,
            "log_every": max(1, steps // 4),
        },
    }


def evaluate(run_dir: Path, overrides: list[str], inference: str) -> dict[str, float]:
    """Metrics of the run's final weights under its config with ``overrides`` (data settings of the evaluation) and
    ``model.inference`` set to ``inference`` (an evaluation setting the engine refuses as a model override)."""
    from fewlabels.engine import load_run

    run = load_run(run_dir, which="last", device="cpu", overrides=overrides)
    run.method.config.model.inference = inference
    run.model.eval()
    with torch.no_grad():
        return run.method.evaluate(run.model, run.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=200, help="training steps of every run (the demo's: 200)")
    parser.add_argument("--out", default="runs/ac_views")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    table = SeedTable(out / "values.jsonl", resume=True)
    evaluations: dict[str, list[str]] = {
        "whole 96, 300 images": [],
        "demo protocol (64 crop, 100 images)": ["data.eval_input_size=0", "data.eval_images=100"],
    }
    for seed in args.seeds:
        for variant in args.variants:
            # row -> inference; AC is evaluated both mask-free (the thesis) and as the 8-ordering ensemble
            rows = {variant: "plain"}
            if variant == "ac":
                rows = {"ac (mask-free)": "plain", "ac (8-ordering ensemble)": "ensemble"}
            if all(table.has(row, col, seed) for row in rows for col in evaluations):
                continue
            run_dir, _, seconds = train_run(out, f"{variant}-seed{seed}", recipe(seed, args.steps, variant))
            for row, inference in rows.items():
                for column, settings in evaluations.items():
                    metrics = evaluate(run_dir, settings, inference)
                    table.add(
                        row,
                        column,
                        seed,
                        metrics["pixel_accuracy"],
                        miou=metrics["miou"],
                        eval_images=metrics["eval_images"],
                        train_seconds=seconds,
                    )
    print(table.markdown())
    # paired differences with AC (mask-free), per evaluation, over the seeds both have
    paired: dict[str, dict[str, Any]] = {}
    for column in evaluations:
        ref = dict(
            zip(table.seeds.get(("ac (mask-free)", column), []), table.cells.get(("ac (mask-free)", column), []))
        )
        for row in dict.fromkeys(r for r, _ in table.cells):
            if row == "ac (mask-free)" or (row, column) not in table.cells:
                continue
            values = dict(zip(table.seeds[(row, column)], table.cells[(row, column)]))
            common = sorted(set(ref) & set(values))
            if len(common) < 2:
                continue
            diff = summarise([values[s] - ref[s] for s in common])
            paired[f"{row} - ac (mask-free) | {column}"] = diff
            print(
                f"{row} - ac (mask-free) | {column}: {diff['mean']:+.4f} +- {diff['ci95']:.4f} (95% CI), "
                f"std {diff['std']:.4f}, seeds {common}"
            )
    print(json.dumps({"summary": table.summary(), "paired": paired, "steps": args.steps}, default=float))


if __name__ == "__main__":
    main()
