"""`make bench` (benchmarks/run_all.py) runs only the timing benchmarks: every script that trains for minutes per
cell (a sweep over seeds) is in its skip list, so that `make bench` stays a few minutes long."""

from __future__ import annotations

import pytest

from benchmark_scripts import BENCHMARKS, load_benchmark

#: the scripts `make bench` times: each prints ratios against a baseline measured in the same run
TIMED = {"ac_step.py", "cct_step.py", "crf_refine.py", "fewshot_eval.py", "relbitfit_step.py"}


def test_make_bench_runs_the_timing_scripts_and_skips_every_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    run_all = load_benchmark("run_all", monkeypatch)
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert run_all.SKIP <= scripts, f"skipped but absent: {run_all.SKIP - scripts}"
    assert scripts - run_all.SKIP == TIMED
    sweeps = {name for name in scripts if "train_run" in (BENCHMARKS / name).read_text()}
    assert sweeps and sweeps <= run_all.SKIP, f"sweeps that `make bench` would run: {sweeps - run_all.SKIP}"
