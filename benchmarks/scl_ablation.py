"""SCL loss ablation on the embedded ``glyphs`` (novel script never seen in pre-training), several seeds.

    python benchmarks/scl_ablation.py --seeds 0 1 2 --steps 400

Pre-trains a conv-4 with each loss combination of the thesis table at the same budget (steps, batch, schedule),
then evaluates 5-way 1-shot and 5-shot episodes on the novel classes (600 episodes, the same episodes for every
model, logistic regression on the pooled + spatial features). Prints one line per run, a markdown table of
mean +- 95% CI over seeds (Student-t on the per-seed means), and a JSON object as the last stdout line.
Not part of `make bench` (minutes per run); docs/results.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from _seeds import SeedTable, train_run

#: name -> (loss weights, augmentation views); every run has the same budget and optimiser
VARIANTS: dict[str, tuple[dict[str, float], list[str]]] = {
    "CE": ({"lambda_sc": 0.0, "lambda_gc": 0.0}, ["none"]),
    "CE+aug": ({"lambda_sc": 0.0, "lambda_gc": 0.0}, ["standard", "simclr"]),
    "CE+SC": ({"lambda_sc": 0.1, "lambda_gc": 0.0}, ["standard", "simclr"]),
    "CE+GC": ({"lambda_sc": 0.0, "lambda_gc": 0.1}, ["standard", "simclr"]),
    "CE+GC+SC": ({"lambda_sc": 0.1, "lambda_gc": 0.1}, ["standard", "simclr"]),
    # controls: the SC term without the augmented views (two identical views), i.e. SC as a supervised
    # regulariser on the raw images, against plain CE; and CE with the RFS "standard" augmentation in one view
    # (what the RFS/SCL papers call CE)
    "CE+SC (no aug)": ({"lambda_sc": 0.1, "lambda_gc": 0.0}, ["none", "none"]),
    # the control the SCL claim needs: CE on the same two identical raw views (same network passes per step)
    # with lambda_sc = 0, so that a CE+SC (no aug) margin is the SC term's and not the doubled CE batch's
    "CE (two raw views)": ({"lambda_sc": 0.0, "lambda_gc": 0.0}, ["none", "none"]),
    "CE (standard aug)": ({"lambda_sc": 0.0, "lambda_gc": 0.0}, ["standard"]),
}

#: what `--variants` runs by default (the thesis table's rows)
DEFAULT_VARIANTS = ["CE", "CE+aug", "CE+SC", "CE+GC", "CE+GC+SC"]


def config(seed: int, steps: int, weights: dict[str, float], views: list[str], weight: float) -> dict[str, Any]:
    from fewlabels.demo import glyphs_pretraining

    scaled = {k: (v / 0.1 * weight if v else 0.0) for k, v in weights.items()}
    return {
        **glyphs_pretraining(seed, steps),
        "method": "scl",
        "loss": {"lambda_cls": 1.0, **scaled},
        "augment": {"views": views},
    }


def paired_differences(table: SeedTable, a: str, b: str) -> dict[str, dict[str, Any]]:
    """Per column, ``a - b`` on the seeds both rows hold: mean, std, Student-t 95% CI over seeds."""
    from _seeds import paired_difference

    out: dict[str, dict[str, Any]] = {}
    for column in dict.fromkeys(c for _, c in table.cells):
        va = dict(zip(table.seeds.get((a, column), []), table.cells.get((a, column), []), strict=True))
        vb = dict(zip(table.seeds.get((b, column), []), table.cells.get((b, column), []), strict=True))
        difference = paired_difference(va, vb)
        if difference is not None:
            out[column] = difference
    return out


def print_results(table: SeedTable, paired_rows: list[str] | None, summary: dict[str, Any]) -> None:
    """The markdown table, the paired ``A - B`` per column (when ``paired_rows`` names A and B), and one JSON line of
    ``summary`` + the table's summary + the paired differences."""
    print(table.markdown(digits=1))
    paired = paired_differences(table, *paired_rows) if paired_rows else {}
    for column, d in paired.items():
        print(
            f"{paired_rows[0]} - {paired_rows[1]}, {column}: {d['mean']:+.2f} +- {d['ci95']:.2f} "
            f"(paired over {d['n']} seeds; per seed {', '.join(f'{v:+.1f}' for v in d['values'])})"
        )
    print(json.dumps({**summary, "summary": table.summary(), "paired": paired}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--weight", type=float, default=0.1, help="weight of the GC and SC terms")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/scl_ablation")
    parser.add_argument("--resume", action="store_true", help="keep OUT/values.jsonl and skip the runs it holds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--paired",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="also print the paired per-seed difference A - B with its 95%% CI, "
        'e.g. "CE+SC (no aug)" "CE (two raw views)"',
    )
    args = parser.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)

    from fewlabels.engine import load_run
    from fewlabels.methods.scl.fewshot_eval import fewshot_evaluate

    out = Path(args.out)
    table = SeedTable(out / "values.jsonl", resume=args.resume)
    for seed in args.seeds:
        for name in args.variants:
            if table.has(name, "5-shot", seed):
                continue
            weights, views = VARIANTS[name]
            cpu0 = time.process_time()
            run_dir, _, seconds = train_run(
                out,
                f"{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}-seed{seed}",
                config(seed, args.steps, weights, views, args.weight),
            )
            run = load_run(run_dir, device="cpu")
            res = fewshot_evaluate(
                run.model, run.method.split("test"), shots=(1, 5), episodes=args.episodes, seed=0, device=run.device
            )
            cpu = time.process_time() - cpu0  # training + evaluation, this process's CPU time
            for k in (1, 5):
                table.add(
                    name,
                    f"{k}-shot",
                    seed,
                    res[f"acc_{k}shot"],
                    ci95_episodes=res[f"ci95_{k}shot"],
                    seconds=seconds,
                    cpu_seconds=cpu,
                    run_dir=str(run_dir),
                )
    print_results(table, args.paired, {"steps": args.steps, "weight": args.weight, "seeds": args.seeds})


if __name__ == "__main__":
    main()
