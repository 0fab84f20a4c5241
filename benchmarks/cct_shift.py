"""CCT under a distribution shift (the thesis' "training under a distribution shift", i.e. UDA): does CCT with the
unlabeled images of a target domain beat a supervised model of the labeled source, on the target's validation split?

    python benchmarks/cct_shift.py --seeds 0 1 2 3 4 --steps 2000 --threads 1 --out OUT
    python benchmarks/cct_shift.py --seeds 0 1 2 3 4 --steps 2000 --out OUT --no-train --plots
    python benchmarks/cct_shift.py --config scenes_uda_dim --ablation only --types vat cutout --out OUT

From one two-domain CCT config whose domain 1 is ``label_free`` (``--config``: a name in configs/cct/ or a YAML path;
default ``scenes_uda``: labeled ``scenes`` as the source, ``scenes-shift`` as the unlabeled target), per seed, with the
same labeled source images (``data.split_seed`` = the seed), model, optimiser and steps for every cell:

* ``supervised``: the supervised baseline on the labeled source images (the config's shared sections, no target);
* ``CCT (UDA)``: the config as it is: the consistency loss on the unlabeled source and target images;
* ``CCT without L_u`` (``loss.unsup_weight = 0``): the same runs with the consistency loss switched off. The target
  images still go through the encoder in training mode, so BatchNorm's statistics adapt to them: the control that
  separates what the consistency loss brings from what seeing the target images does on its own;
* ``CCT, source only`` (``--source-only``): single-domain CCT on the source (its unlabeled images, no target):
  what the target's images bring over CCT itself;
* which perturbations carry the gain (``--ablation only``, ``all-but`` or ``both``; ``--types`` limits it to some
  types): ``only T`` (type T's decoders alone) and ``all but T`` (every other type's), the cells of
  ``benchmarks/cct_ablation.py`` on the UDA config. Each is paired with ``CCT without L_u`` (does T alone keep the
  consistency loss's gain?) and with ``CCT (UDA)`` (does the mix lose it without T?).

The value of a cell is the final model's mIoU on the target's validation split: ``miou_d1`` of a two-domain run, and
for a single-domain run an evaluation of its final model with the target's data section (``data.dataset``, ...).
The source's mIoU is stored beside it (``source_miou``). Prints each cell's target mIoU (mean, sample std over seeds),
the paired per-seed difference with supervised-only with its Student-t 95% CI, and ``CCT (UDA) - CCT without L_u``
(and the ablation's table); the last stdout line is a JSON object. Cells are files ``OUT/cells/<cell>-seed<s>.json``
(a stopped sweep resumes; ``--cells`` splits it over processes, as in ``benchmarks/cct_fractions.py``). Not part of
`make bench`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cct_ablation import (
    ABLATION_KINDS,
    BASELINE,
    Cell,
    Measure,
    paired_text,
    perturbation_cells,
    read_config,
    report,
    run_selected,
    seeds_ahead,
)
from cct_fractions import parse_sweep, selected_cells, summarise_cells

UDA = "CCT (UDA)"
NO_LOSS = "CCT without L_u"
SOURCE_ONLY = "CCT, source only"
#: the target's data keys that describe the split or the crop, not the dataset (left out of its evaluation)
SPLIT_KEYS = ("label_free", "labeled", "crop_size", "split_seed", "unlabeled_images")


def target_of(cct: Mapping[str, Any]) -> dict[str, Any]:
    """The label-free target domain (``domains[0]``) of a two-domain config; anything else is an error."""
    domains = cct.get("domains") or []
    if len(domains) != 1 or not domains[0].get("label_free"):
        raise SystemExit("the shift benchmark needs a config with one further domain that is label_free (the target)")
    return dict(domains[0])


def shift_cells(source_only: bool = False) -> list[Cell]:
    """The baseline, CCT (UDA), CCT without its consistency loss and, optionally, single-domain CCT on the source."""
    cells = [Cell(BASELINE, "baseline"), Cell(UDA, "method"), Cell(NO_LOSS, "method", {"loss": {"unsup_weight": 0.0}})]
    if source_only:
        cells.append(Cell(SOURCE_ONLY, "method", {"domains": [], "predict_domain": 0}))
    return cells


def ablation_cells(cct: Mapping[str, Any], kind: str | None, types: list[str] | None) -> list[Cell]:
    """The perturbation ablation's cells of the UDA config (``only T`` / ``all but T``, see
    :func:`cct_ablation.perturbation_cells`); none when ``kind`` is None. A bad kind or type is a one-line error."""
    if kind is None:
        if types:
            raise SystemExit("--types chooses the ablation's cells: pass --ablation too")
        return []
    from fewlabels.registry import config_from_dict

    counts = config_from_dict(dict(cct)).perturbations.counts
    try:
        return perturbation_cells(counts, kind, types)
    except ValueError as err:
        raise SystemExit(f"--ablation/--types: {err}") from None


def target_overrides(target: Mapping[str, Any]) -> list[str]:
    """``data.KEY=VALUE`` overrides that point a single-domain run's evaluation at the target's validation split."""
    return [f"data.{k}={v}" for k, v in target.items() if k not in SPLIT_KEYS and v is not None]


def measure_on_target(target: Mapping[str, Any]) -> Measure:
    """The ``measure`` of :func:`cct_ablation.run_cells`: ``target_miou`` and ``source_miou`` of a finished run (and
    for a single-domain run, its per-class IoUs on the target, ``iou/<class>_target``)."""

    def measure(run_dir: Path, config: Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, float]:
        if config.get("domains"):  # a two-domain run evaluated both domains itself
            return {"target_miou": metrics["miou_d1"], "source_miou": metrics["miou_d0"]}
        from fewlabels.engine import load_run

        run = load_run(run_dir, which="last", device="cpu", overrides=target_overrides(target))
        on_target = run.evaluate()
        per_class = {f"{k}_target": v for k, v in on_target.items() if k.startswith("iou/")}
        return {"target_miou": on_target["miou"], "source_miou": metrics["miou"], **per_class}

    return measure


def summarise_shift(values: Mapping[str, Mapping[int, float]], ablation: Sequence[Cell] = ()) -> dict[str, Any]:
    """Per cell: the target mIoU summary and the paired difference with the baseline; UDA minus its controls; each
    ``ablation`` cell minus ``CCT without L_u`` and minus ``CCT (UDA)``, with its K."""
    pairs = [(UDA, NO_LOSS, "minus_no_loss"), (UDA, SOURCE_ONLY, "minus_source_only")]
    for cell in ablation:
        pairs += [(cell.name, NO_LOSS, "minus_no_loss"), (cell.name, UDA, "minus_uda")]
    rows = summarise_cells(values, "target_miou", tuple(pairs))
    for cell in ablation:
        if cell.name in rows:
            rows[cell.name]["K"] = cell.decoders
    return rows


def markdown(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per cell (target mIoU, std, n, paired difference with supervised-only), then the controls, then the
    ablation's cells (with K, and minus the runs without L_u and minus full UDA)."""
    lines = [
        "| method | target mIoU | std | n | - supervised (paired, 95% CI) | seeds ahead |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if "K" in row:
            continue
        m, d = row["target_miou"], row.get("minus_supervised")
        lines.append(f"| {name} | {m['mean']:.3f} | {m['std']:.3f} | {m['n']} | {paired_text(d)} | {seeds_ahead(d)} |")
    controls = (("minus_no_loss", NO_LOSS), ("minus_source_only", SOURCE_ONLY))
    extra = [(label, rows[UDA][k]) for k, label in controls if k in rows.get(UDA, {})]
    if extra:
        lines += ["", "| difference | paired, 95% CI | seeds ahead |", "|---|---|---|"]
        for label, d in extra:
            lines.append(f"| {UDA} - {label} | {paired_text(d)} | {seeds_ahead(d)} |")
    ablation = [name for name, row in rows.items() if "K" in row]
    if ablation:
        lines += [
            "",
            f"| cell | K | target mIoU | std | n | - {NO_LOSS} (paired, 95% CI) | seeds ahead "
            f"| - {UDA} (paired, 95% CI) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in ablation:
            row = rows[name]
            m, low, full = row["target_miou"], row.get("minus_no_loss"), row.get("minus_uda")
            lines.append(
                f"| {name} | {row['K']} | {m['mean']:.3f} | {m['std']:.3f} | {m['n']} | {paired_text(low)} "
                f"| {seeds_ahead(low)} | {paired_text(full)} |"
            )
    return "\n".join(lines)


def save_plot(rows: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    """Target mIoU per cell (mean, 95% CI, the seeds as dots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(7.0, 0.8 * len(rows)), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = list(rows)
    for i, name in enumerate(names):
        m = rows[name]["target_miou"]
        half = m["ci95"] if m["n"] > 1 else 0.0
        ax.errorbar([i], [m["mean"]], yerr=[half], fmt="o", capsize=5, color="tab:blue" if i else "tab:gray")
        ax.scatter([i + 0.15] * m["n"], m["values"], s=10, color="black", alpha=0.5)
    crowded = len(names) > 5
    ax.set_xticks(range(len(names)), names, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel("mIoU on the target's val split (final model)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="scenes_uda", help="configs/cct/<name>.yaml or a YAML path")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None, help="train.steps (default: the config's)")
    parser.add_argument("--source-only", action="store_true", help="also train single-domain CCT on the source")
    kinds = [k for k in ABLATION_KINDS if k != "only-k"]
    parser.add_argument("--ablation", choices=kinds, default=None, help="also train the perturbation ablation's cells")
    parser.add_argument("--types", nargs="+", default=None, help="the ablation's cells of these types only")
    args = parse_sweep(parser, argv, "runs/cct_shift", "shift.png")
    cct = read_config(args.config)
    target = target_of(cct)
    ablation = ablation_cells(cct, args.ablation, args.types)
    cells = shift_cells(args.source_only) + ablation
    trained = selected_cells(cells, args.cells)
    values = run_selected(args, cct, cells, trained, measure_on_target(target), "target_miou")
    rows = summarise_shift(values, ablation)
    source, shifted = cct["data"].get("dataset"), target.get("dataset")
    title = f"{source} -> {shifted} ({Path(args.config).name}): mIoU on the target"
    return report(
        f"CCT under a shift ({args.config}: {source} labeled -> {shifted} unlabeled, seeds {args.seeds})",
        markdown(rows),
        (lambda: save_plot(rows, Path(args.out) / "shift.png", title)) if args.plots and rows else None,
        {"config": args.config, "steps": args.steps, "seeds": args.seeds, "cells": rows},
    )


if __name__ == "__main__":
    main()
