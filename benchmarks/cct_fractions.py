"""CCT against supervised-only at several label fractions: several seeds, one budget, paired differences and a plot.

    python benchmarks/cct_fractions.py --fractions 0.02 0.05 0.1 --seeds 0 1 2 3 4 --plots
    python benchmarks/cct_fractions.py --config digit_mosaics --fractions 0.02 --seeds 0 1 2 3 4

From one CCT config (``--config``: a name in configs/cct/ or a YAML path; default ``scenes``), for every label
fraction f and seed s, with the same data, model, optimiser and steps for every cell:

* ``supervised``: the supervised baseline (the config's shared sections, ``method: supervised``);
* ``CCT``: the config as it is;
* ``supervised 2x steps`` (``--control``): the baseline trained for twice the steps, so that its encoder sees as many
  images as CCT's (CCT runs the encoder on a labeled and an equal unlabeled batch per step): the compute-matched
  control. Off by default (it costs a third run per cell). Printed with ``CCT - supervised 2x steps`` (and the
  same for the two weak-label cells below).
* ``CCT without L_u`` (``--no-loss-control``): CCT with ``loss.unsup_weight = 0``. The unlabeled batches still go
  through the encoder in training mode (so BatchNorm's statistics see them) and through the perturbations and aux
  decoders, but the consistency loss trains nothing: the control that isolates the consistency loss from the rest
  of what a CCT step does. Printed with the paired difference ``CCT - CCT without L_u``.
* ``CCT + weak labels`` (``--weak-labels DIR``): CCT with ``weak.labels_dir`` = DIR, where ``{seed}`` in DIR stands
  for the seed (each seed's split has its own unlabeled images, so its own pseudo-labels: see
  ``benchmarks/cct_weak.py``, which writes ``OUT/seed<s>/labels``). Printed with ``CCT + weak labels - CCT``. With
  ``--no-loss-control`` too, ``CCT + weak labels without L_u`` (the pseudo-labels train the aux decoders, the
  consistency loss nothing): what the weak labels give alone, printed as ``CCT + weak labels - ...``.
* ``pseudo-labels as masks`` (``--weak-baseline``, with ``--weak-labels``): the plain way to use weak labels, the
  baseline CCT's use of them is measured against: the same pseudo-labels, at the same weight and ramp, as extra
  masks of the main decoder on the unlabeled images (``weak.target: main``), with ``loss.unsup_weight = 0``.
  Printed with ``CCT + weak labels - pseudo-labels as masks`` (and ``... without L_u - ...``: which decoders the
  pseudo-labels train, the rest equal).

``data.labeled`` is f and ``data.split_seed`` is s: each seed draws its own labeled images, and every method of a
seed gets the same ones. The final model is evaluated once (no checkpoint is chosen on the reported set).

Prints, per fraction, the mIoU of each method (mean and sample std over seeds) and the paired per-seed difference
CCT - supervised with its Student-t 95% CI; the last stdout line is a JSON object. Every finished cell is a file
``OUT/f<fraction>/cells/<cell>-seed<s>.json``: a stopped sweep resumes where it was (``--fresh`` retrains).
``--weak-weights 0.02=1.5 0.1=0.1`` sets ``weak.weight`` of the CCT + weak labels cells per fraction and
``--masks-weights 0.02=0.005`` that of the plain baseline (default: CCT's), so that each use of the weak labels runs
at the weight chosen for it on a dev split; a cell file trained at another weight is refused.
``--plots`` saves ``OUT/fractions.png``. ``--cells`` trains only the named cells (their slugs: ``supervised``,
``cct``, ``supervised_2x_steps``, ``cct_without_l_u``, ``cct_weak_labels``, ``cct_weak_labels_without_l_u``,
``pseudo_labels_as_masks``) and
reports every cell that has a file, so that a sweep can be split over processes, each with its own ``--out``, and
read back from one folder. Not part of `make bench` (minutes per run).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _seeds import paired_difference, summarise
from cct_ablation import (
    BASELINE,
    Cell,
    fraction_config,
    merged,
    paired_text,
    read_config,
    report,
    run_selected,
    seeds_ahead,
)

CCT = "CCT"
CONTROL = "supervised 2x steps"
NO_LOSS = "CCT without L_u"
WEAK = "CCT + weak labels"
WEAK_NO_LOSS = "CCT + weak labels without L_u"
PSEUDO_MASKS = "pseudo-labels as masks"


def fraction_cells(
    control: bool,
    no_loss_control: bool = False,
    weak_labels: str = "",
    weak_baseline: bool = False,
    weak_weight: float | None = None,
    masks_weight: float | None = None,
) -> list[Cell]:
    """The cells of one fraction: the baseline, CCT, and optionally the compute-matched baseline, CCT without its
    consistency loss, CCT with the weak labels of the folder ``weak_labels`` (``{seed}``: the seed), and the plain
    weak-label baseline (``weak_baseline``: those pseudo-labels as extra masks of the main decoder).

    ``weak_weight``: the ``weak.weight`` of the two CCT + weak labels cells (None: the config's); ``masks_weight``:
    that of the plain baseline (None: the same as CCT's), so that each way of using the weak labels can run at the
    weight chosen for it on a dev split."""
    cells = [Cell(BASELINE, "baseline"), Cell(CCT, "method")]
    if control:
        cells.append(Cell(CONTROL, "baseline", steps_factor=2.0))
    if no_loss_control:
        cells.append(Cell(NO_LOSS, "method", {"loss": {"unsup_weight": 0.0}}))
    if weak_labels:
        folder = str(Path(weak_labels).resolve())  # an absolute path: the runs start elsewhere

        def labels(seed: int) -> dict[str, Any]:
            return {"weak": {"labels_dir": folder.format(seed=seed)}}

        def weight(value: float | None) -> dict[str, Any]:
            return {} if value is None else {"weak": {"weight": value}}

        cells.append(Cell(WEAK, "method", weight(weak_weight), per_seed=labels))
        if no_loss_control:  # the weak labels alone: L_w trains the aux decoders, L_u nothing
            overrides = merged(weight(weak_weight), {"loss": {"unsup_weight": 0.0}})
            cells.append(Cell(WEAK_NO_LOSS, "method", overrides, per_seed=labels))
        if weak_baseline:  # the pseudo-labels as the main decoder's masks of the unlabeled images, no L_u
            own = weight(weak_weight if masks_weight is None else masks_weight)
            overrides = merged(own, {"loss": {"unsup_weight": 0.0}, "weak": {"target": "main"}})
            cells.append(Cell(PSEUDO_MASKS, "method", overrides, per_seed=labels))
    elif weak_baseline:
        raise SystemExit("--weak-baseline needs --weak-labels DIR (the pseudo-labels it trains on)")
    elif weak_weight is not None or masks_weight is not None:
        raise SystemExit("--weak-weights and --masks-weights need --weak-labels DIR (the cells they weigh)")
    return cells


def per_fraction(option: str, items: list[str], fractions: list[float]) -> dict[float, float]:
    """``FRACTION=WEIGHT`` items (a weight chosen per fraction on a dev split) as a dict; a malformed item, a
    negative weight or a fraction not in the sweep is an error naming the option."""
    out: dict[float, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            fraction, weight = float(key), float(value)
        except ValueError:
            fraction = weight = math.nan
        if not sep or math.isnan(fraction) or not weight >= 0:
            raise SystemExit(f"{option} takes FRACTION=WEIGHT items with WEIGHT >= 0; got {item!r}")
        if fraction not in fractions:
            raise SystemExit(f"{option} {item!r}: {fraction:g} is not one of --fractions {fractions}")
        out[fraction] = weight
    return out


def selected_cells(cells: list[Cell], slugs: list[str] | None) -> list[Cell]:
    """The cells named by ``slugs`` (all with None); an unknown slug is an error naming the known ones."""
    if slugs is None:
        return cells
    known = [c.slug for c in cells]
    unknown = [s for s in slugs if s not in known]
    if unknown:
        raise SystemExit(f"--cells {unknown}: not a cell of this sweep; its cells are {known}")
    return [c for c in cells if c.slug in slugs]


def summarise_cells(
    values: Mapping[str, Mapping[int, float]], key: str, pairs: tuple[tuple[str, str, str], ...] = ()
) -> dict[str, Any]:
    """Per cell with values: their summary under ``key`` and, except for the baseline, the paired difference with it
    (``minus_supervised``); for each ``(a, b, field)`` of ``pairs`` where both cells have values, ``a - b`` paired
    as ``out[a][field]``."""
    out: dict[str, Any] = {}
    for name, per_seed in values.items():
        if not per_seed:
            continue
        seeds = sorted(per_seed)
        out[name] = {key: {**summarise([per_seed[s] for s in seeds]), "seeds": seeds}}
        if name != BASELINE:
            out[name]["minus_supervised"] = paired_difference(per_seed, values.get(BASELINE, {}))
    for a, b, field in pairs:
        if values.get(a) and values.get(b):
            out[a][field] = paired_difference(values[a], values[b])
    return out


#: the paired differences printed besides each cell's with the baseline: (cell, other cell, field of the cell's row)
PAIRS = (
    (CCT, CONTROL, "minus_control"),
    (WEAK, CONTROL, "minus_control"),
    (PSEUDO_MASKS, CONTROL, "minus_control"),
    (CCT, NO_LOSS, "minus_no_loss"),
    (WEAK, CCT, "minus_cct"),
    (WEAK, WEAK_NO_LOSS, "minus_no_loss"),
    (WEAK, PSEUDO_MASKS, "minus_pseudo_masks"),
    (WEAK_NO_LOSS, PSEUDO_MASKS, "minus_pseudo_masks"),
)


def summarise_fraction(values: Mapping[str, Mapping[int, float]]) -> dict[str, Any]:
    """Per method: the mIoU summary; per method other than the baseline: the paired difference with it."""
    return summarise_cells(values, "miou", PAIRS)


def markdown(rows: Mapping[float, Mapping[str, Any]]) -> str:
    """One line per (fraction, method): mIoU mean, std, n, and the paired difference with supervised-only."""
    lines = [
        "| labeled | method | mIoU | std | n | - supervised (paired, 95% CI) | seeds ahead |",
        "|---|---|---|---|---|---|---|",
    ]
    for fraction, methods in rows.items():
        for name, row in methods.items():
            m, d = row["miou"], row.get("minus_supervised")
            stats = f"{m['mean']:.3f} | {m['std']:.3f} | {m['n']}"
            lines.append(f"| {fraction:g} | {name} | {stats} | {paired_text(d)} | {seeds_ahead(d)} |")
    for cell, other, field in PAIRS:
        isolated = [(f, m[cell][field]) for f, m in rows.items() if field in m.get(cell, {})]
        if isolated:
            lines += ["", f"| labeled | {cell} - {other} (paired, 95% CI) | seeds ahead |", "|---|---|---|"]
            for fraction, d in isolated:
                lines.append(f"| {fraction:g} | {paired_text(d)} | {seeds_ahead(d)} |")
    return "\n".join(lines)


def save_plot(rows: Mapping[float, Mapping[str, Any]], path: Path, title: str) -> Path:
    """mIoU over the label fraction (left) and the paired difference with supervised-only (right), 95% CIs; the
    cells' legend below the panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def err(d: Mapping[str, Any] | None) -> float:
        return 0.0 if d is None or math.isnan(d["ci95"]) else float(d["ci95"])

    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fractions = sorted(rows)
    names = list(dict.fromkeys(n for f in fractions for n in rows[f]))

    def dodge(xs: list[float], i: int) -> list[float]:  # methods side by side at each fraction (log axis)
        return [x * 1.08 ** (i - (len(names) - 1) / 2) for x in xs]

    for i, name in enumerate(names):
        xs = [f for f in fractions if name in rows[f]]
        line = left.errorbar(
            dodge(xs, i),
            [rows[f][name]["miou"]["mean"] for f in xs],
            yerr=[err(rows[f][name]["miou"]) for f in xs],
            marker="o",
            capsize=3,
            label=name,
        )
        if name != BASELINE:
            diffs = [(f, rows[f][name].get("minus_supervised")) for f in xs]
            diffs = [(f, d) for f, d in diffs if d is not None]
            right.errorbar(
                dodge([f for f, _ in diffs], i),
                [d["mean"] for _, d in diffs],
                yerr=[err(d) for _, d in diffs],
                marker="o",
                capsize=3,
                color=line[0].get_color(),
                label=f"{name} - supervised",
            )
    right.axhline(0.0, color="black", linewidth=0.8)
    for ax, label in ((left, "mIoU (mean over seeds, 95% CI)"), (right, "paired difference (95% CI)")):
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions])
        ax.set_xlim(min(fractions) / 1.4, max(fractions) * 1.4)
        ax.minorticks_off()
        ax.set_xlabel("labeled fraction of the training images")
        ax.set_ylabel(label)
    # one legend below both panels (a cell has the same colour in each): inside, it hid points once there were six
    rows_of_legend = math.ceil(len(names) / 3)
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize="small", frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    fig.savefig(path, dpi=120)
    return path


def parse_sweep(parser: argparse.ArgumentParser, argv: list[str] | None, out: str, figure: str) -> argparse.Namespace:
    """Add the options every cell sweep shares (output folder, resume, figure, threads, the cells to train), parse
    ``argv``, and set torch's thread count."""
    parser.add_argument("--out", default=out)
    parser.add_argument("--fresh", action="store_true", help="retrain the cells that have a file")
    parser.add_argument("--plots", action="store_true", help=f"save OUT/{figure}")
    parser.add_argument("--no-train", action="store_true", help="only report the cells that have a file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cells", nargs="+", default=None, help="train only these cells (slugs); report all")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    return args


def plot_label(cct: Mapping[str, Any], config: str) -> str:
    """The figure's name for a config: its dataset and file name (``digit-mosaics (my.yaml)``), not a full path."""
    name = Path(config).name
    dataset = cct.get("data", {}).get("dataset")
    return f"{dataset} ({name})" if dataset and dataset != name else name


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="scenes", help="configs/cct/<name>.yaml or a YAML path")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None, help="train.steps (default: the config's)")
    parser.add_argument("--control", action="store_true", help="also train the baseline for 2x the steps")
    parser.add_argument("--no-loss-control", action="store_true", help="also train CCT with loss.unsup_weight = 0")
    parser.add_argument(
        "--weak-labels", default="", help="also train CCT with weak.labels_dir = this folder ({seed}: the seed)"
    )
    parser.add_argument(
        "--weak-baseline",
        action="store_true",
        help="with --weak-labels: also train the pseudo-labels as masks of the main decoder, without L_u",
    )
    parser.add_argument(
        "--weak-weights",
        nargs="+",
        default=[],
        metavar="FRACTION=WEIGHT",
        help="weak.weight of the CCT + weak labels cells at a fraction (others: the config's)",
    )
    parser.add_argument(
        "--masks-weights",
        nargs="+",
        default=[],
        metavar="FRACTION=WEIGHT",
        help="weak.weight of the pseudo-labels as masks cell at a fraction (others: CCT's)",
    )
    args = parse_sweep(parser, argv, "runs/cct_fractions", "fractions.png")
    bad = [f for f in args.fractions if not 0 < f < 1]
    if bad:
        raise SystemExit(f"--fractions {bad}: a fraction is in (0, 1)")
    weak_weights = per_fraction("--weak-weights", args.weak_weights, args.fractions)
    masks_weights = per_fraction("--masks-weights", args.masks_weights, args.fractions)
    cct = read_config(args.config)
    rows: dict[float, dict[str, Any]] = {}
    for fraction in args.fractions:
        cells = fraction_cells(
            args.control,
            args.no_loss_control,
            args.weak_labels,
            args.weak_baseline,
            weak_weights.get(fraction),
            masks_weights.get(fraction),
        )
        trained = selected_cells(cells, args.cells)
        sweep = argparse.Namespace(**{**vars(args), "out": str(Path(args.out) / f"f{fraction:g}")})
        config = fraction_config(cct, fraction)
        values = run_selected(sweep, config, cells, trained)
        if any(values.values()):
            rows[fraction] = summarise_fraction(values)
    title = f"{plot_label(cct, args.config)}: CCT vs supervised-only"
    weights = "".join(
        f"; at {f:g}: weak.weight {weak_weights.get(f, 'of the config')} (CCT + weak labels), "
        f"{masks_weights.get(f, weak_weights.get(f, 'of the config'))} (pseudo-labels as masks)"
        for f in args.fractions
        if args.weak_labels and (f in weak_weights or f in masks_weights)
    )
    return report(
        f"CCT vs supervised-only ({args.config}, mIoU of the final model, seeds {args.seeds}{weights})",
        markdown(rows),
        (lambda: save_plot(rows, Path(args.out) / "fractions.png", title)) if args.plots else None,
        {
            "config": args.config,
            "steps": args.steps,
            "seeds": args.seeds,
            "weak_weights": weak_weights,
            "masks_weights": masks_weights,
            "fractions": rows,
        },
    )


if __name__ == "__main__":
    main()
