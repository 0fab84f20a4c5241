"""Cross-dataset few-shot evaluation of the runs an SCL ablation trained: pre-trained on ``glyphs``, tested on
another few-shot dataset (by default ``digits``, scikit-learn's real scanned handwritten digits).

    python benchmarks/scl_ablation.py --seeds 0 1 2 3 4 --steps 50 --variants "CE+SC (no aug)" "CE (two raw views)"
    python benchmarks/scl_cross_dataset.py runs/scl_ablation --paired "CE+SC (no aug)" "CE (two raw views)"
    python benchmarks/scl_cross_dataset.py runs/scl_ablation --variants none --untrained 0 1 2 --dataset glyphs

Reads ABLATION_OUT/values.jsonl (the runs ``scl_ablation.py`` recorded, each with its run directory), loads every
run with ``data.dataset=DATASET`` and evaluates 5-way 1-shot and 5-shot episodes on its test split (600 episodes,
the same for every model; logistic regression on the pooled + spatial features, the run's own protocol otherwise).
Prints one line per run, a markdown table of mean +- 95% CI over pre-training seeds, the paired per-seed difference
of two variants, and a JSON object as the last stdout line. Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _seeds import SeedTable
from scl_ablation import print_results


def untrained_model(seed: int) -> Any:
    """A conv-4 of the glyphs pre-training recipe (CE head, 170 base classes), initialised with ``seed``, untrained."""
    from fewlabels.demo import glyphs_pretraining
    from fewlabels.engine.rng import seed_everything
    from fewlabels.registry import config_from_dict, get_method

    config = config_from_dict(
        {
            **glyphs_pretraining(seed, 1),
            "method": "scl",
            "loss": {"lambda_cls": 1.0, "lambda_sc": 0.0, "lambda_gc": 0.0},
            "augment": {"views": ["none"]},
        }
    )
    seed_everything(seed)
    return get_method("scl")(config).build_model().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ablation_out", help="the --out folder of scl_ablation.py (holds values.jsonl)")
    parser.add_argument("--dataset", default="digits", help="the few-shot dataset to test on (its test split)")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument(
        "--variants", nargs="+", default=None, help="only these rows of the ablation (default all; e.g. none: no row)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds (default all)")
    parser.add_argument("--out", default="", help="JSONL of the values (default ABLATION_OUT/cross_DATASET.jsonl)")
    parser.add_argument("--resume", action="store_true", help="keep OUT and skip the runs it holds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--paired", nargs=2, metavar=("A", "B"), default=None, help="also print A - B per seed")
    parser.add_argument(
        "--untrained",
        type=int,
        nargs="*",
        default=[],
        metavar="SEED",
        help="also evaluate untrained conv-4s of the glyphs recipe, initialised with these seeds (row 'untrained')",
    )
    args = parser.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)

    from fewlabels.data.registry import load_fewshot
    from fewlabels.engine import load_run
    from fewlabels.methods.scl.fewshot_eval import fewshot_evaluate

    source = Path(args.ablation_out)
    runs: dict[tuple[str, int], str] = {}
    for line in (source / "values.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if "run_dir" in r:
                runs[(r["row"], int(r["seed"]))] = r["run_dir"]
    table = SeedTable(Path(args.out or source / f"cross_{args.dataset}.jsonl"), resume=args.resume)
    for (name, seed), run_dir in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if (args.variants and name not in args.variants) or (args.seeds is not None and seed not in args.seeds):
            continue
        if table.has(name, "5-shot", seed):
            continue
        cpu0 = time.process_time()
        run = load_run(run_dir, device="cpu", overrides=[f"data.dataset={args.dataset}"])
        res = fewshot_evaluate(
            run.model, run.method.split("test"), shots=(1, 5), episodes=args.episodes, seed=0, device=run.device
        )
        cpu = time.process_time() - cpu0
        for k in (1, 5):
            table.add(name, f"{k}-shot", seed, res[f"acc_{k}shot"], ci95_episodes=res[f"ci95_{k}shot"], cpu_seconds=cpu)
    for seed in args.untrained:
        if table.has("untrained", "5-shot", seed):
            continue
        cpu0 = time.process_time()
        test = load_fewshot(args.dataset, split="test", image_size=32)
        res = fewshot_evaluate(untrained_model(seed), test, shots=(1, 5), episodes=args.episodes, seed=0, device="cpu")
        cpu = time.process_time() - cpu0
        for k in (1, 5):
            table.add(
                "untrained", f"{k}-shot", seed, res[f"acc_{k}shot"], ci95_episodes=res[f"ci95_{k}shot"], cpu_seconds=cpu
            )
    print_results(table, args.paired, {"dataset": args.dataset, "episodes": args.episodes})


if __name__ == "__main__":
    main()
