"""The demo end to end at a tiny budget: every stage trains, evaluates, and lands in the summary and report."""

from __future__ import annotations

import json

import pytest

from fewlabels.demo import STAGES, run_demo


def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    report = run_demo(out_dir=tmp_path / "demo", minutes=0.05)
    rows = json.loads((tmp_path / "demo" / "summary.json").read_text())
    methods = {r["method"].split()[0] for r in rows}
    assert methods == {"CCT", "AC", "SCL", "RelBitFit"} and set(STAGES) == {"cct", "ac", "scl", "relbitfit"}
    for r in rows:
        assert 0 <= r["value"] <= 100 and 0 <= r["baseline_value"] <= 100
    # SCL: CE + SC against CE on the same two raw views, over seeds; the rows are the means, the note the spread
    scl = [r for r in rows if r["method"].startswith("SCL")]
    assert [r["method"] for r in scl] == ["SCL 1-shot", "SCL 5-shot"]
    for r in scl:
        extra = r["extra"]
        assert r["baseline"] == "CE (two raw views)" and extra["seeds"] == [0, 1, 2]
        assert len(extra["scl"]) == len(extra["ce2"]) == 3
        assert r["value"] == pytest.approx(sum(extra["scl"]) / 3)
        assert r["baseline_value"] == pytest.approx(sum(extra["ce2"]) / 3)
        assert extra["difference"] == pytest.approx([a - b for a, b in zip(extra["scl"], extra["ce2"], strict=True)])
        assert "per seed " + ", ".join(f"{d:+.1f}" for d in extra["difference"]) in r["note"]
        assert 0 <= extra["untrained"] <= 100 and f"untrained conv-4 {extra['untrained']:.1f}" in r["note"]
    text = report.read_text()
    assert "| CCT | supervised | mIoU |" in text
    for figure in ("segmentation.png", "scl_episodes.png", "bias_changes.png", "ac_clusters.png"):
        assert figure in text
        assert next((tmp_path / "demo").rglob(figure)).stat().st_size > 1000
