"""The demo end to end at a tiny budget: every stage trains, evaluates, and lands in the summary and report."""

from __future__ import annotations

import json

from fewlabels.demo import STAGES, run_demo


def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    report = run_demo(out_dir=tmp_path / "demo", minutes=0.05)
    rows = json.loads((tmp_path / "demo" / "summary.json").read_text())
    methods = {r["method"].split()[0] for r in rows}
    assert methods == {"CCT", "AC", "SCL", "RelBitFit"} and set(STAGES) == {"cct", "ac", "scl", "relbitfit"}
    for r in rows:
        assert 0 <= r["value"] <= 100 and 0 <= r["baseline_value"] <= 100
    text = report.read_text()
    assert "| CCT | supervised | mIoU |" in text
    for figure in ("segmentation.png", "scl_episodes.png", "bias_changes.png", "ac_clusters.png"):
        assert figure in text
        assert next((tmp_path / "demo").rglob(figure)).stat().st_size > 1000
