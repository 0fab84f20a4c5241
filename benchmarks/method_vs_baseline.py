"""Method vs baseline over several seeds, on the embedded data, with the demo's recipes (same data, budget, seed).

    python benchmarks/method_vs_baseline.py --method cct --seeds 0 1 2
    python benchmarks/method_vs_baseline.py --method ac --seeds 0 1 2

Prints one line per seed and a summary (mean, sample std, 95% CI half-width); the last stdout line is a JSON object.
Not part of `make bench` (it trains for minutes per seed); docs/results.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fewlabels.demo import STAGES, run_demo
from fewlabels.metrics import mean_confidence_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=sorted(STAGES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=None, help="demo budget scale (default: the demo's)")
    parser.add_argument("--out", default="runs/method_vs_baseline")
    args = parser.parse_args()

    per_row: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        folder = Path(args.out) / f"{args.method}-seed{seed}"
        run_demo(out_dir=folder, methods=[args.method], minutes=args.minutes, seed=seed)
        for row in json.loads((folder / "summary.json").read_text()):
            slot = per_row.setdefault(f"{row['method']} vs {row['baseline']} ({row['metric']})", {})
            slot.setdefault("method", []).append(row["value"])
            slot.setdefault("baseline", []).append(row["baseline_value"])
            for k, v in row.get("extra", {}).items():
                slot.setdefault(k, []).append(v)
            print(f"seed {seed}: {row['method']} {row['value']:.4f}  {row['baseline']} {row['baseline_value']:.4f}")
    summary = {}
    for name, values in per_row.items():
        summary[name] = {}
        for who, xs in values.items():
            mean, half = mean_confidence_interval(xs) if len(xs) > 1 else (xs[0], float("nan"))
            summary[name][who] = {
                "mean": mean,
                "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0,
                "ci95": half,
                "values": xs,
            }
            print(
                f"{name} | {who}: {mean:.4f} +- {half:.4f} (95% CI), std {summary[name][who]['std']:.4f}, n={len(xs)}"
            )
    print(json.dumps({"method": args.method, "seeds": args.seeds, "summary": summary}))


if __name__ == "__main__":
    main()
