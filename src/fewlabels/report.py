"""``fewlabels report RUN_DIR``: training curves, the metrics table and qualitative figures in ``report.md``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fewlabels.engine.monitor import read_metrics

log = logging.getLogger(__name__)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def metrics_table(metrics: dict[str, Any]) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    return lines


def build_report(
    run_dir: str | Path,
    device: str = "auto",
    overrides: Sequence[str] = (),
    which: str = "best",
    out_dir: str | Path | None = None,
) -> Path:
    """Write ``OUT/report.md`` (+ PNGs in ``OUT/report/``) and return its path; ``OUT`` is ``out_dir`` (created if
    needed), by default the run directory. The figures are drawn with the ``which`` weights (``best`` or ``last``).

    The figures read the run's validation data (``overrides`` such as ``data.root=...`` say where it is now); when
    it cannot be read, the report is written without them and says why.
    """
    from fewlabels.data.base import DataError
    from fewlabels.engine import load_run
    from fewlabels.viz import plot_curves

    run = load_run(run_dir, which=which, device=device, overrides=overrides)
    root = run.run_dir if out_dir is None else Path(out_dir)
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    records = read_metrics(run.run_dir / "metrics.jsonl")
    lines = [
        f"# Report: {run.run_dir.name}",
        "",
        f"Method: **{run.config.method}** ({run.method.description}); weights: `{run.weights.name}`.",
        "",
    ]
    if records:
        curves = plot_curves(run.run_dir / "metrics.jsonl", out / "curves.png")
        train_rows = [r for r in records if r["split"] == "train"]
        lines += [
            "## Training",
            "",
            f"{train_rows[-1]['step'] if train_rows else 0} steps; final training loss {train_rows[-1]['loss']:.4f}."
            if train_rows
            else "",
            "",
            f"![training curves]({curves.relative_to(root)})",
            "",
        ]
    best_path = run.run_dir / "best.json"
    if best_path.is_file():
        best = json.loads(best_path.read_text())
        lines += [f"## Best checkpoint (step {best.get('step')}, selected on `{run.method.metric}`)", ""]
        lines += metrics_table({k: v for k, v in best.items() if k != "step"}) + [""]
    try:
        figures = run.method.report_figures(run.model, out, run.device)
    except DataError as e:
        log.warning("report without figures: %s", e)
        lines += ["## Figures", "", f"Not drawn: the run's data could not be read ({e}).", ""]
        figures = {}
    if figures:
        lines += ["## Figures", ""]
        for title, path in figures.items():
            lines += [f"**{title}**", "", f"![{title}]({Path(path).relative_to(root)})", ""]
    report = root / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
