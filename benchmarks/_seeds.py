"""Shared by the multi-seed result scripts: train one config in-process, and summarise values over seeds.

Not a benchmark itself (``run_all.py`` skips files starting with ``_``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fewlabels.metrics import mean_confidence_interval


def train_run(out_dir: Path, name: str, data: dict[str, Any]) -> tuple[Path, dict[str, float], float]:
    """Train a fresh run ``out_dir/name``; return its directory, final metrics and wall seconds."""
    from fewlabels.engine import train
    from fewlabels.engine.allocator import opt_in
    from fewlabels.registry import config_from_dict

    opt_in()  # a benchmark process trains as the command line does (malloc tuned for CPU training)
    run_dir = out_dir / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"== {name}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    result = train(config_from_dict({**data, "name": name, "output_dir": str(out_dir)}))
    return result.run_dir, result.metrics, time.perf_counter() - t0


def summarise(values: list[float]) -> dict[str, Any]:
    """Mean, sample std and Student-t 95% CI half-width over seeds (NaN spread for a single value)."""
    if len(values) > 1:
        mean, half = mean_confidence_interval(values)
        std = float(np.std(values, ddof=1))
    else:
        mean, half, std = float(values[0]), float("nan"), float("nan")
    return {"mean": mean, "std": std, "ci95": half, "n": len(values), "values": values}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any] | None:
    """``a - b`` paired by seed, over the seeds both hold (seed -> value): :func:`summarise` of the per-seed
    differences (mean, sample std, Student-t 95% CI half-width), plus those ``seeds``; None if they share none."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return {**summarise([a[s] - b[s] for s in seeds]), "seeds": seeds}


class SeedTable:
    """Per-seed values of named cells; prints a markdown table of ``mean +- CI (std)`` and appends raw rows to a
    JSONL file as they arrive, so a long sweep that is stopped keeps what it measured. With ``resume`` the
    values already in the file are loaded and :meth:`has` lets the sweep skip them."""

    def __init__(self, log: Path, resume: bool = False) -> None:
        self.cells: dict[tuple[str, str], list[float]] = {}
        self.seeds: dict[tuple[str, str], list[int]] = {}
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        if resume and log.is_file():
            for line in log.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self._record(r["row"], r["column"], r["seed"], r["value"])
        elif log.is_file():
            log.unlink()

    def _record(self, row: str, column: str, seed: int, value: float) -> None:
        self.cells.setdefault((row, column), []).append(value)
        self.seeds.setdefault((row, column), []).append(seed)

    def has(self, row: str, column: str, seed: int) -> bool:
        return seed in self.seeds.get((row, column), [])

    def add(self, row: str, column: str, seed: int, value: float, **extra: Any) -> None:
        self._record(row, column, seed, value)
        with self.log.open("a") as f:
            f.write(json.dumps({"row": row, "column": column, "seed": seed, "value": value, **extra}) + "\n")
        print(f"{row} | {column} | seed {seed}: {value:.4f}", flush=True)

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (row, column), values in self.cells.items():
            out.setdefault(row, {})[column] = summarise(values)
        return out

    def markdown(self, scale: float = 1.0, digits: int = 3) -> str:
        summary = self.summary()
        columns = list(dict.fromkeys(c for _, c in self.cells))
        lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for row, cells in summary.items():
            parts = []
            for c in columns:
                s = cells.get(c)
                if s is None:
                    parts.append("")
                    continue
                parts.append(
                    f"{s['mean'] * scale:.{digits}f} +- {s['ci95'] * scale:.{digits}f} "
                    f"(std {s['std'] * scale:.{digits}f}, n={s['n']})"
                )
            lines.append(f"| {row} | " + " | ".join(parts) + " |")
        return "\n".join(lines)
