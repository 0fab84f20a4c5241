"""AC's views on an embedded dataset (``scenes`` or ``digit-mosaics``): raster orderings (AC: mask-free inference,
mask-free with re-estimated BatchNorm statistics, and the 8-ordering ensemble), AC with IIC's augmentations added to
the orderings, the IIC baseline (augmented views), and the thesis' open question -- random (non-raster) orderings and
dropout views.

Every variant trains the same network with the same loss, data, seed and budget (the demo's AC recipe: 64 x 64
crops of 300 generated 96 x 96 images, widths 16/32, one decoder block, k = the dataset's classes, T = 3,
uncollapsed loss, Adam 1e-3, batch 8, ``--steps`` steps), through the training engine. Each trained network is
evaluated with Hungarian matching on all 300 training images, whole 96 x 96 (IIC's IID setting:
``data.eval_input_size=96``, labels only to evaluate): pixel accuracy and mIoU. On ``scenes`` it is evaluated once
more with the demo's protocol (centre 64 x 64 crops of the first 100 scenes) so the demo table can be compared.

    python benchmarks/ac_views.py --seeds 0 1 2 3 4                          # scenes, all variants
    python benchmarks/ac_views.py --dataset digit-mosaics --seeds 0 1 2 3 4
    python benchmarks/ac_views.py --seeds 0 --variants ac iic                # a subset

Prints one line per (variant, evaluation, seed), then per evaluation mean, sample std and 95% CI over seeds, and
the paired difference of each variant with AC (mask-free) with its Student-t 95% CI. Finished runs are kept in
``OUT/values.jsonl``: a stopped sweep resumes. The last stdout line is a JSON object. Not part of ``make bench``
(minutes per run); docs/results.md quotes its output.
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
    "ac+aug": {"model": {"mask_from": "features"}, "views": {"jitter": 0.3, "flip": True}},
    "iic": {"model": {"mask_from": "none"}, "views": {"jitter": 0.3, "flip": True}},
    "random": {"model": {"mask_from": "features"}, "views": {"kind": "random"}},
    "dropout": {"model": {"mask_from": "features"}, "views": {"kind": "dropout", "dropout": 0.2}},
}


#: Datasets the sweep runs on, and their number of classes (k).
DATASETS = {"scenes": 6, "digit-mosaics": 11}
#: AC's rows: name -> (inference, BatchNorm re-estimation batches).
AC_ROWS = {"ac (mask-free)": ("plain", 0), "ac (mask-free, BN re-estimated)": ("plain", 20)}
AC_ROWS["ac (8-ordering ensemble)"] = ("ensemble", 0)


def recipe(seed: int, steps: int, variant: str, dataset: str = "scenes") -> dict[str, Any]:
    """The demo's AC recipe with whole-image evaluation on every image, plus the variant's sections."""
    extra = VARIANTS[variant]
    model = {"widths": [16, 32], "decoder_blocks": 1, "k": DATASETS[dataset], "k_over": 0}
    return {
        "method": "ac",
        "seed": seed,
        "model": {**model, **extra.get("model", {})},
        "loss": {"displacement": 3, "lamb": 1.0, "collapsed": False},
        "views": extra.get("views", {}),
        "data": {
            "dataset": dataset,
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


def evaluate(run_dir: Path, overrides: list[str], inference: str, bn_batches: int = 0) -> dict[str, float]:
    """Metrics of the run's final weights under its config with ``overrides`` (data settings of the evaluation),
    ``model.inference`` set to ``inference`` (an evaluation setting the engine refuses as a model override) and
    ``bn_batches`` batches of BatchNorm re-estimation (``eval.bn_reestimate``)."""
    from fewlabels.engine import load_run

    run = load_run(run_dir, which="last", device="cpu", overrides=[*overrides, f"eval.bn_reestimate={bn_batches}"])
    run.method.config.model.inference = inference
    run.model.eval()
    with torch.no_grad():
        return run.method.evaluate(run.model, run.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scenes", choices=sorted(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=200, help="training steps of every run (the demo's: 200)")
    parser.add_argument("--out", default="runs/ac_views")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--no-train", action="store_true", help="only report the runs already in OUT/values.jsonl")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    table = SeedTable(out / "values.jsonl", resume=True)
    # column -> (evaluation overrides, metric)
    evaluations: dict[str, tuple[list[str], str]] = {
        "pixel accuracy, whole 96, 300 images": ([], "pixel_accuracy"),
        "mIoU, whole 96, 300 images": ([], "miou"),
    }
    if args.dataset == "scenes":
        demo = ["data.eval_input_size=0", "data.eval_images=100"]
        evaluations["pixel accuracy, demo protocol (64 crop, 100 images)"] = (demo, "pixel_accuracy")
    for seed in args.seeds:
        for variant in args.variants:
            # row -> (inference, BN re-estimation); AC is evaluated mask-free (the thesis), mask-free with
            # re-estimated BatchNorm statistics, and as the 8-ordering ensemble
            rows = AC_ROWS if variant == "ac" else {variant: ("plain", 0)}
            if args.no_train or all(table.has(row, col, seed) for row in rows for col in evaluations):
                continue
            config = recipe(seed, args.steps, variant, args.dataset)
            run_dir, _, seconds = train_run(out, f"{variant}-seed{seed}", config)
            for row, (inference, bn_batches) in rows.items():
                done: dict[tuple[str, ...], dict[str, float]] = {}
                for column, (settings, metric) in evaluations.items():
                    key = tuple(settings)
                    if key not in done:
                        done[key] = evaluate(run_dir, settings, inference, bn_batches)
                    metrics = done[key]
                    table.add(
                        row,
                        column,
                        seed,
                        metrics[metric],
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
    result = {"dataset": args.dataset, "summary": table.summary(), "paired": paired, "steps": args.steps}
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
