"""Few-sample comparison on the embedded Rotten Tomatoes with the packaged MiniLM-L6: full fine-tuning vs BitFit
vs RelBitFit (and RelBitFit + PT + LR + Clip), N training snippets drawn with each seed.

    python benchmarks/relbitfit_fewsample.py --n 100 500 2000 --seeds 0 1 2

Every variant sees the same N snippets for a seed (the seed draws the subset and initialises the head), the same
batch, length, number of optimizer steps (125) and evaluation; the learning rate is each variant's own (full
fine-tuning 5e-5, the bias methods 1e-3, within the BitFit paper's ranges), without a grid. The reported number
is the test accuracy (the first 1000 of the fixed held-out snippets) of the final weights; the dev split
(``--dev-size`` snippets carved from the training pool) is evaluated beside it but selects nothing here. For the
dev-selected comparison (a learning-rate grid per variant, checkpoints chosen on dev) use
``benchmarks/relbitfit_sweep.py``. Prints one line per run, a markdown table of accuracy mean +- 95% CI over
seeds, and a JSON object as the last stdout line. Not part of `make bench` (minutes per run).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from _seeds import SeedTable, train_run

#: name -> model options and learning rate
VARIANTS: dict[str, tuple[dict[str, Any], float]] = {
    "full": ({"variant": "full"}, 5e-5),
    "BitFit": ({"variant": "bitfit"}, 1e-3),
    "RelBitFit": ({"variant": "relbitfit"}, 1e-3),
    "RelBitFit+PT+LR+Clip": ({"variant": "relbitfit", "pt": True, "lr": True, "clip": True}, 1e-3),
}

#: passes over the N snippets: the same budget for every N (125 optimizer steps at batch 16), so a larger N means
#: more distinct examples, not more training
EPOCHS = {100: 20.0, 500: 4.0, 2000: 1.0}


def config(
    seed: int, n: int, model: dict[str, Any], lr: float, epochs: float, length: int, max_eval: int, dev_size: int
) -> dict[str, Any]:
    return {
        "method": "relbitfit",
        "seed": seed,
        "model": model,
        "data": {
            "dataset": "rotten-tomatoes",
            "n_train": n,
            "dev_size": dev_size,
            "max_length": length,
            "max_eval": max_eval,
        },
        "train": {
            "epochs": epochs,
            "batch_size": 16,
            "optimizer": "adamw",
            "lr": lr,
            "weight_decay": 0.0,
            "scheduler": "constant",
            "max_grad_norm": 1.0,
            "checkpoint_every": 100000,
            "log_every": 10,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-eval", type=int, default=1000, help="held-out snippets evaluated (0 = all 2000)")
    parser.add_argument("--dev-size", type=int, default=500, help="dev snippets carved from the training pool")
    parser.add_argument("--budget", type=float, default=1.0, help="multiplies every N's number of passes (steps)")
    parser.add_argument("--out", default="runs/relbitfit_fewsample")
    parser.add_argument("--keep-runs", action="store_true", help="keep the run folders (full runs are ~90 MB each)")
    parser.add_argument("--resume", action="store_true", help="keep OUT/values.jsonl and skip the runs it holds")
    args = parser.parse_args()

    out = Path(args.out)
    table = SeedTable(out / "values.jsonl", resume=args.resume)
    for n in args.n:
        epochs = EPOCHS.get(n, 1.0) * args.budget
        for seed in args.seeds:
            for name in args.variants:
                if table.has(name, f"N={n}", seed):
                    continue
                model, lr = VARIANTS[name]
                run_name = f"{name.replace('+', '_')}-n{n}-seed{seed}"
                data = config(seed, n, model, lr, epochs, args.max_length, args.max_eval, args.dev_size)
                run_dir, metrics, seconds = train_run(out, run_name, data)
                table.add(name, f"N={n}", seed, metrics["accuracy_test"], seconds=seconds, dev=metrics["accuracy"])
                if not args.keep_runs:
                    shutil.rmtree(run_dir)
    print(table.markdown())
    epochs = {n: EPOCHS.get(n, 1.0) * args.budget for n in args.n}
    print(json.dumps({"n": args.n, "seeds": args.seeds, "epochs": epochs, "summary": table.summary()}))


if __name__ == "__main__":
    main()
