"""Which CCT perturbations matter, and how CCT's gain grows with unlabeled data: several seeds, one budget.

    python benchmarks/cct_ablation.py --seeds 0 1 2                 # configs/cct/scenes.yaml, every cell
    python benchmarks/cct_ablation.py --parts ablation --config voc_92 --steps 2000
    python benchmarks/cct_ablation.py --parts curve --unlabeled 100 300 900 1800 --plots
    python benchmarks/cct_ablation.py --labeled 0.02 --ablation only --seeds 0 1 2   # cct_fractions' cells of 2 %
    python benchmarks/cct_ablation.py --labeled 0.02 --ablation only-k --types context_mask dropout --seeds 0

From one CCT config (``--config``: a name in configs/cct/ or a YAML path; default ``scenes``) and per seed, with the
same data, model, optimiser and steps for every cell:

* ``supervised``: the supervised baseline (the config's shared sections, ``method: supervised``);
* ``CCT (all)``: the config as it is;
* ablation: ``only T`` and ``all but T`` for every registered perturbation type T with decoders in the config (its
  count kept, every other type's count set to 0, or the reverse); the types and counts come from the registry.
  ``--ablation only`` or ``all-but`` trains one of the two families (e.g. the cheap ``only T`` cells first);
  ``--ablation only-k`` trains the control ``only T xK`` instead: T alone with as many decoders as the whole config
  (K = 7 for scenes), which separates the mix of types from the number of consistency terms; ``--types`` limits
  the ablation's cells to some types;
* curve: ``unlabeled N``, CCT trained on N of the unlabeled images (``unlabeled_images``: nested draws, the same
  labeled images), for every N of ``--unlabeled``; full CCT (every unlabeled image) is the curve's last point.

Prints markdown tables of the final mIoU: mean and sample std over seeds, and the paired per-seed difference with the
supervised baseline (and, for the ablation, with full CCT), mean +- Student-t 95% CI. The last stdout line is a JSON
object. Every finished cell is a JSON file ``OUT/cells/<cell>-seed<s>.json`` with its config: a stopped sweep
skips those cells when run again (a cell file of another config is an error, a config that differs only in its
``name`` is the same; ``--fresh`` retrains them).
``--labeled f`` sets ``data.labeled`` of every cell and lets each seed draw its own labeled images
(``data.split_seed = seed``), as ``benchmarks/cct_fractions.py`` does: its ``supervised`` and ``CCT`` cell files of
fraction f and seed s are then this sweep's ``supervised`` and ``CCT (all)`` cells (the same configs, so the same runs).
``--plots`` saves ``ablation.png`` and ``unlabeled_curve.png`` in ``OUT``.
Not part of `make bench` (minutes per run).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _seeds import paired_difference, summarise, train_run

REPO = Path(__file__).resolve().parents[1]
BASELINE, FULL = "supervised", "CCT (all)"
#: the parts of the sweep, in the order they run within a seed
PARTS = ("ablation", "curve")


#: ``measure(run_dir, config, metrics)`` of :func:`run_cells`: more metrics of a finished run
Measure = Callable[[Path, Mapping[str, Any], Mapping[str, float]], Mapping[str, float]]


@dataclass(frozen=True)
class Cell:
    """One trained configuration: its row name, its part, the keys it changes in the CCT config, its K."""

    name: str
    part: str
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)
    decoders: int = 0
    unlabeled: int | None = None  # curve cells: the number of unlabeled images
    steps_factor: float = 1.0  # the cell trains for this multiple of the sweep's steps (a compute-matched control)
    #: keys the cell changes per seed (e.g. each seed's own pseudo-label folder), merged after ``overrides``
    per_seed: Callable[[int], dict[str, Any]] | None = field(default=None, hash=False, compare=False)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name).strip("_").lower()


def config_path(name: str) -> Path:
    """``configs/cct/<name>.yaml``, or the YAML file ``name``."""
    return Path(name) if name.endswith((".yaml", ".yml")) else REPO / "configs" / "cct" / f"{name}.yaml"


def read_config(name: str) -> dict[str, Any]:
    """The CCT config ``configs/cct/<name>.yaml``, or the YAML file ``name``."""
    from fewlabels.config import read_yaml

    path = config_path(name)
    data = read_yaml(path)
    if data.get("method", "cct") != "cct":
        raise SystemExit(f"{path} is a {data['method']!r} config; the ablation needs a CCT one")
    return {**data, "method": "cct"}


def baseline_config(cct: Mapping[str, Any]) -> dict[str, Any]:
    """The supervised baseline of a CCT config: the sections the two methods share, ``method: supervised``."""
    from fewlabels.methods.supervised.config import SupervisedConfig

    shared = {f.name for f in dataclasses.fields(SupervisedConfig)}
    return {**{k: copy.deepcopy(v) for k, v in cct.items() if k in shared}, "method": "supervised"}


#: which ablation cells to train: ``only T``, ``all but T``, or both; ``only-k``: the control ``only T xK``, T alone
#: with as many decoders as the whole config has (separates mixing the types from the count K; not part of ``both``)
ABLATION_KINDS = ("both", "only", "all-but", "only-k")


def perturbation_cells(counts: Mapping[str, int], kind: str = "both", types: Iterable[str] | None = None) -> list[Cell]:
    """``only T`` for every registered type T with decoders in ``counts`` (a ``PerturbationsConfig.counts``), then
    ``all but T`` for each of them (when another type has decoders): each sets the count fields of every registered
    type. ``kind`` (one of :data:`ABLATION_KINDS`) keeps one of the two families, or asks for the ``only T xK``
    control instead (T alone with K = the total count). ``types``: only the cells of these types (``None``: all)."""
    if kind not in ABLATION_KINDS:
        raise ValueError(f"ablation kind {kind!r}: expected one of {ABLATION_KINDS}")
    from fewlabels.methods.cct.perturbations import get_perturbation

    field_of = {name: get_perturbation(name).count_field for name in counts}
    active = [name for name, count in counts.items() if count > 0]
    chosen = active if types is None else list(types)
    unknown = [name for name in chosen if name not in active]
    if unknown:
        raise ValueError(f"perturbation types {unknown}: the config has decoders of {active}")
    total = sum(counts[name] for name in active)

    def cell(label: str, keep: Mapping[str, int]) -> Cell:
        section = {field_of[name]: keep.get(name, 0) for name in counts}
        return Cell(label, "ablation", {"perturbations": section}, sum(keep.values()))

    if kind == "only-k":
        return [cell(f"only {name} x{total}", {name: total}) for name in chosen]
    cells = [cell(f"only {name}", {name: counts[name]}) for name in chosen] if kind != "all-but" else []
    if len(active) > 1 and kind != "only":
        cells += [cell(f"all but {name}", {n: counts[n] for n in active if n != name}) for name in chosen]
    return cells


def build_cells(
    cct: Mapping[str, Any],
    parts: list[str],
    unlabeled: list[int],
    ablation: str = "both",
    types: Iterable[str] | None = None,
) -> list[Cell]:
    """Every cell of the sweep for the CCT config ``cct``: the baseline, full CCT, then the parts asked for
    (``ablation``, ``types``: which ablation cells, see :func:`perturbation_cells`)."""
    from fewlabels.registry import config_from_dict

    perturbations = config_from_dict(dict(cct)).perturbations
    cells = [Cell(BASELINE, "baseline"), Cell(FULL, "ablation", {}, perturbations.total)]
    if "ablation" in parts:
        cells += perturbation_cells(perturbations.counts, ablation, types)
    if "curve" in parts:
        curve = [Cell(f"unlabeled {n}", "curve", {"unlabeled_images": n}, perturbations.total, n) for n in unlabeled]
        cells += curve
    return cells


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, section by section."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def run_config(
    cct: Mapping[str, Any], cell: Cell, seed: int, steps: int | None, split_seed: bool = False
) -> dict[str, Any]:
    """The config of ``cell`` at ``seed``: evaluated once, at the end (the final model's mIoU is the value).
    ``split_seed``: the labeled images are drawn with ``data.split_seed = seed`` too (else the config's draw)."""
    from fewlabels.registry import config_from_dict

    base = baseline_config(cct) if cell.part == "baseline" else cct
    train: dict[str, Any] = {"eval_every": 0}
    if steps or cell.steps_factor != 1.0:
        steps = steps or config_from_dict(dict(cct)).train.steps
        steps = max(1, round(steps * cell.steps_factor))
        train.update(steps=steps, checkpoint_every=steps)
    extra: dict[str, Any] = {"data": {"split_seed": seed}} if split_seed else {}
    own = merged(cell.overrides, cell.per_seed(seed)) if cell.per_seed is not None else cell.overrides
    return merged(merged(base, own), {**extra, "seed": seed, "train": train})


def fraction_config(cct: Mapping[str, Any], fraction: float) -> dict[str, Any]:
    """The CCT config with ``data.labeled = fraction`` (the split seed is set per seed by :func:`run_cells`)."""
    return merged(cct, {"data": {"labeled": fraction}})


def unlabeled_count(cct: Mapping[str, Any]) -> int:
    """How many unlabeled images the config's split has (the curve's full point)."""
    from fewlabels.registry import config_from_dict, get_method

    config = config_from_dict(dict(cct))
    return len(get_method("cct")(config).data.unlabeled)


def same_training(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two run configs train the same thing: equal but for ``name``, which only labels a run (a cell's run
    folder is named by the cell), so that a baseline cell trained from a copy of the config under another name is
    reused rather than refused."""
    return {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items() if k != "name"}


def run_cells(
    args: argparse.Namespace,
    cct: Mapping[str, Any],
    cells: list[Cell],
    split_seed_per_seed: bool = False,
    measure: Measure | None = None,
    metric: str = "miou",
) -> dict[str, dict[int, float]]:
    """Train every missing (cell, seed), seeds outermost; return cell -> seed -> final ``metric`` from the cell
    files. ``split_seed_per_seed``: each seed draws its own labeled images (see :func:`run_config`). ``measure``:
    called with the finished run's directory, its config and final metrics, returns more metrics (e.g. an evaluation
    on another dataset) that are stored with the others; ``metric`` names the one reported (default the run's own
    final mIoU)."""
    folder = Path(args.out) / "cells"
    folder.mkdir(parents=True, exist_ok=True)
    values: dict[str, dict[int, float]] = {cell.name: {} for cell in cells}
    for seed in args.seeds:
        for cell in cells:
            path = folder / f"{cell.slug}-seed{seed}.json"
            config = json.loads(json.dumps(run_config(cct, cell, seed, args.steps, split_seed_per_seed)))
            if path.is_file() and not args.fresh:
                done = json.loads(path.read_text())
                if not same_training(done["config"], config):
                    raise SystemExit(f"{path} was trained with another config: pass --fresh, or another --out")
                values[cell.name][seed] = done["miou"] if metric == "miou" else done["metrics"][metric]
                continue
            if getattr(args, "no_train", False):  # report what is there; a missing cell stays missing
                continue
            run_dir, metrics, seconds = train_run(Path(args.out) / "runs", f"{cell.slug}-seed{seed}", config)
            if measure is not None:
                metrics = {**metrics, **measure(run_dir, config, metrics)}
            record = {"cell": cell.name, "part": cell.part, "seed": seed, "miou": metrics["miou"], "seconds": seconds}
            record.update(config=config, metrics=metrics)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(path)  # a cell file is whole or absent
            values[cell.name][seed] = metrics[metric]
            print(f"{cell.name} | seed {seed}: {metric} {metrics[metric]:.4f} ({seconds:.0f} s)", flush=True)
    return values


def run_selected(
    args: argparse.Namespace,
    cct: Mapping[str, Any],
    cells: list[Cell],
    trained: list[Cell],
    measure: Measure | None = None,
    metric: str = "miou",
) -> dict[str, dict[int, float]]:
    """:func:`run_cells` of the ``trained`` subset of ``cells`` (each seed with its own labeled images), then the
    values of every cell of ``cells`` that has a file: a sweep split over processes is read back from one folder."""
    values = run_cells(args, cct, trained, True, measure, metric)
    if trained != cells:
        read = argparse.Namespace(**{**vars(args), "no_train": True, "fresh": False})
        values = run_cells(read, cct, cells, True, measure, metric)
    return values


def report(heading: str, table: str, plot: Callable[[], Path] | None, result: dict[str, Any]) -> dict[str, Any]:
    """Print a sweep's heading and table, the figure ``plot()`` wrote (when given) and, last, ``result`` as JSON."""
    print(f"\n{heading}:\n")
    print(table)
    if plot is not None:
        print(f"wrote {plot()}")
    print(json.dumps(result))
    return result


def paired_text(d: Mapping[str, Any] | None) -> str:
    """A paired difference as ``+0.012 +- 0.008`` (mean +- 95% CI half-width); '' for None."""
    return "" if d is None else f"{d['mean']:+.3f} +- {d['ci95']:.3f}"


def seeds_ahead(d: Mapping[str, Any] | None) -> str:
    """How many of a paired difference's seeds are above 0, as ``4/5``; '' for None."""
    return "" if d is None else f"{sum(v > 0 for v in d['values'])}/{d['n']}"


def summaries(cells: list[Cell], values: dict[str, dict[int, float]]) -> dict[str, dict[str, Any]]:
    """Per cell: K, the mIoU summary over seeds, and the paired differences with the baseline and full CCT."""
    out: dict[str, dict[str, Any]] = {}
    for cell in cells:
        if not values[cell.name]:
            continue
        seeds = sorted(values[cell.name])
        row: dict[str, Any] = {"part": cell.part, "K": cell.decoders, "unlabeled": cell.unlabeled}
        row["miou"] = {**summarise([values[cell.name][s] for s in seeds]), "seeds": seeds}
        if cell.name != BASELINE:
            row["minus_supervised"] = paired_difference(values[cell.name], values[BASELINE])
        if cell.part == "ablation" and cell.name != FULL:
            row["minus_full"] = paired_difference(values[cell.name], values[FULL])
        out[cell.name] = row
    return out


def _curve_label(name: str, row: Mapping[str, Any], total_unlabeled: int | None) -> str:
    if name == BASELINE:
        return "0 (supervised)"
    if name == FULL:
        return f"all ({total_unlabeled}): CCT (all)" if total_unlabeled is not None else "all: CCT (all)"
    return str(row["unlabeled"])


def markdown(rows: Mapping[str, Mapping[str, Any]], part: str, total_unlabeled: int | None = None) -> str:
    """The table of one part; the baseline and full CCT rows are in both."""
    if part == "ablation":
        columns = ["cell", "K", "mIoU", "std", "n", "- supervised (paired, 95% CI)", "- CCT (all) (paired, 95% CI)"]
    else:
        columns = ["unlabeled images", "mIoU", "std", "n", "- supervised (paired, 95% CI)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    names = [name for name, row in rows.items() if row["part"] in ("baseline", part) or name == FULL]
    if part == "curve":  # the baseline (no unlabeled image), the counts in order, every unlabeled image
        names.sort(key=lambda name: {BASELINE: -1, FULL: math.inf}.get(name, rows[name]["unlabeled"]))
    for name in names:
        row = rows[name]
        m = row["miou"]
        stats = [f"{m['mean']:.3f}", f"{m['std']:.3f}", str(m["n"])]
        if part == "ablation":
            cells = [
                name,
                str(row["K"]),
                *stats,
                paired_text(row.get("minus_supervised")),
                paired_text(row.get("minus_full")),
            ]
        else:
            cells = [_curve_label(name, row, total_unlabeled), *stats, paired_text(row.get("minus_supervised"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _error(d: Mapping[str, Any] | None) -> float:
    """A CI half-width to draw (0 where a single seed leaves it undefined)."""
    return 0.0 if d is None or math.isnan(d["ci95"]) else float(d["ci95"])


def _seeds_label(summaries: Iterable[Mapping[str, Any]]) -> str:
    """How many seeds the plotted points average: a 95% CI needs at least 2."""
    counts = sorted({int(d["n"]) for d in summaries})
    if counts == [1]:
        return "1 seed, no CI"
    seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"mean over {seeds} seeds, 95% CI"


def save_plots(rows: Mapping[str, Mapping[str, Any]], out: Path, total_unlabeled: int | None) -> list[Path]:
    """``ablation.png`` (paired difference with the baseline per cell) and ``unlabeled_curve.png`` (mIoU over N)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    saved = []
    ablation = [
        (n, r["minus_supervised"]) for n, r in rows.items() if r["part"] == "ablation" and r.get("minus_supervised")
    ]
    if ablation:
        fig = Figure(figsize=(6.5, 0.35 * len(ablation) + 1.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        names = [n for n, _ in ablation][::-1]
        means = [d["mean"] for _, d in ablation][::-1]
        ax.barh(names, means, xerr=[_error(d) for _, d in ablation][::-1], color="tab:blue", capsize=3)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel(f"mIoU - supervised (paired, {_seeds_label(d for _, d in ablation)})")
        fig.tight_layout()
        saved.append(out / "ablation.png")
        fig.savefig(saved[-1], dpi=120)
    curve = sorted((r["unlabeled"], r["miou"]) for r in rows.values() if r["part"] == "curve")
    if FULL in rows and total_unlabeled is not None and total_unlabeled not in {n for n, _ in curve}:
        curve.append((total_unlabeled, rows[FULL]["miou"]))
    if curve:
        fig = Figure(figsize=(5.5, 3.8))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        xs = [n for n, _ in curve]
        ax.errorbar(
            xs, [m["mean"] for _, m in curve], yerr=[_error(m) for _, m in curve], marker="o", capsize=3, label="CCT"
        )
        if BASELINE in rows:
            base = rows[BASELINE]["miou"]
            ax.axhline(base["mean"], color="tab:gray", linestyle="--", label="supervised")
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(n) for n in xs])
        ax.minorticks_off()
        ax.set_xlabel("unlabeled images")
        ax.set_ylabel(f"mIoU ({_seeds_label(m for _, m in curve)})")
        ax.legend()
        fig.tight_layout()
        saved.append(out / "unlabeled_curve.png")
        fig.savefig(saved[-1], dpi=120)
    return saved


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="scenes", help="configs/cct/<name>.yaml or a YAML path")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--unlabeled", type=int, nargs="+", default=[100, 300, 900], help="curve: unlabeled counts")
    parser.add_argument(
        "--ablation",
        default="both",
        choices=ABLATION_KINDS,
        help="the ablation's cells: only T, all but T, both, or only-k (T alone with the config's total K decoders)",
    )
    parser.add_argument("--types", nargs="+", default=None, help="the ablation's cells of these types only")
    parser.add_argument(
        "--labeled",
        type=float,
        default=None,
        help="data.labeled of every cell, each seed drawing its own labeled images (data.split_seed = seed), as "
        "benchmarks/cct_fractions.py does: its supervised and CCT cells of that fraction are this sweep's "
        "(default: the config's labeled set and draw)",
    )
    parser.add_argument("--steps", type=int, default=None, help="train.steps of every cell (default: the config's)")
    parser.add_argument("--out", default="runs/cct_ablation")
    parser.add_argument("--fresh", action="store_true", help="retrain the cells that have a file in OUT/cells")
    parser.add_argument("--plots", action="store_true", help="save ablation.png and unlabeled_curve.png in OUT")
    parser.add_argument("--no-train", action="store_true", help="only report the cells that have a file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    cct = read_config(args.config)
    if args.labeled is not None:
        if not 0.0 < args.labeled < 1.0:
            raise SystemExit(f"--labeled {args.labeled}: a fraction of the training images in (0, 1)")
        cct = fraction_config(cct, args.labeled)
    total = None
    if "curve" in args.parts:
        total = unlabeled_count(cct)
        bad = [n for n in args.unlabeled if not 0 < n <= total]
        if bad:
            raise SystemExit(f"--unlabeled {bad}: the split of {args.config} has 1..{total} unlabeled images")
    # all the unlabeled images is full CCT, the curve's last point: not trained twice
    try:
        cells = build_cells(cct, args.parts, [n for n in args.unlabeled if n != total], args.ablation, args.types)
    except ValueError as err:
        raise SystemExit(f"--types: {err}") from None
    values = run_cells(args, cct, cells, split_seed_per_seed=args.labeled is not None)
    rows = summaries(cells, values)
    for part in args.parts:
        print(f"\n{part} ({args.config}, mIoU of the final model, seeds {args.seeds}):\n")
        print(markdown(rows, part, total))
    if args.plots:
        for path in save_plots(rows, Path(args.out), total):
            print(f"wrote {path}")
    result = {"config": args.config, "steps": args.steps, "seeds": args.seeds, "unlabeled_total": total, "cells": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
