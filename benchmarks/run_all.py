"""`make bench`: run every benchmark script, collect the JSON object each prints last, write benchmarks/results.md.

Each script times the project's implementation against a baseline measured in the same process and prints ratios;
this runner only gathers them into one table (figure, value, target, machine).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

#: scripts that are not timing benchmarks (they train for minutes per seed; docs/results.md quotes them)
SKIP = {
    "run_all.py",
    "method_vs_baseline.py",
    "scl_ablation.py",
    "scl_cross_dataset.py",
    "relbitfit_fewsample.py",
    "cct_ablation.py",
    "cct_fractions.py",
    "cct_shift.py",
    "cct_weak.py",
    "ac_views.py",
    "relbitfit_sweep.py",
    "gpu_check.py",  # one JSON line per config, on CUDA (docs/gpu.md), not a ratio against a baseline
}

#: figure -> (target text, predicate) for the figures that have a target in the issues
TARGETS = {
    "k30_over_k1": ("<= 1.10", lambda v: v <= 1.10),
    "two_view_over_one_view": ("<= 2.0", lambda v: v <= 2.0),
    "speedup": (">= 10", lambda v: v >= 10),
    "relbitfit_over_bitfit": ("<= 1.15", lambda v: v <= 1.15),
}


#: scripts run with arguments other than their defaults: script -> [(label, extra args, the targets apply)].
#: cct_step.py times both of its models by default: the reference model (ResNet-50 deep stem + PSP), whose
#: unprefixed ``k30_over_k1`` carries the CCT target, and ResNet-18 with the one-decoder-at-a-time loop, whose
#: ``resnet18_`` figures are for information.
RUNS: dict[str, list[tuple[str, list[str], bool]]] = {}


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads"


def main() -> int:
    rows, failures = [], []
    for script in sorted(HERE.glob("*.py")):
        if script.name in SKIP or script.name.startswith("_"):
            continue
        for label, extra, targeted in RUNS.get(script.name, [("", [], True)]):
            name = f"{script.stem} ({label})" if label else script.stem
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, str(script), *extra], capture_output=True, text=True)
            lines = [line for line in res.stdout.strip().splitlines() if line.strip()]
            try:
                figures = json.loads(lines[-1]) if res.returncode == 0 and lines else None
            except json.JSONDecodeError:
                figures = None
            if figures is None:
                failures.append(name)
                print(res.stderr[-2000:], file=sys.stderr)
                continue
            for key, value in figures.items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                target, ok = TARGETS.get(key, ("", None)) if targeted else ("", None)
                verdict = "" if ok is None else ("met" if ok(value) else "missed")
                rows.append(f"| {name} | {key} | {value:.4g} | {target} {verdict} | {machine()} |")
            print(f"   {time.perf_counter() - t0:.0f} s: {lines[-1]}", flush=True)
    out = HERE / "results.md"
    out.write_text(
        "# Benchmark results (`make bench`)\n\n"
        "| benchmark | figure | value | target | machine |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(f"wrote {out}")
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
