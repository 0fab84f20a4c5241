"""``fewlabels demo`` / ``make demo``: each method next to its baseline on embedded data, offline, on a CPU.

Every stage trains its method and its baseline briefly with the same data, budget and seed, evaluates both with
the method's own protocol, and contributes a row to the summary table and figures to ``runs/demo/report.md``.
The budget (``--minutes``) scales the number of training steps of every stage.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewlabels.registry import available_methods, config_from_dict

#: the budget the stages' default step counts are sized for (all four methods on a 2-core CPU)
DEFAULT_MINUTES = 7.0


@dataclass
class DemoRow:
    method: str
    baseline: str
    metric: str
    value: float
    baseline_value: float
    labels: str
    seconds: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    rows: list[DemoRow]
    figures: dict[str, Path] = field(default_factory=dict)
    runs: list[Path] = field(default_factory=list)


@dataclass
class DemoContext:
    out_dir: Path
    scale: float  # multiplies every stage's default step count
    seed: int = 0

    def steps(self, default: int) -> int:
        return max(2, int(round(default * self.scale)))

    def train(self, name: str, data: dict[str, Any]) -> tuple[Path, dict[str, float], float]:
        """Train a fresh run ``out_dir/name`` from ``data``; return its directory, final metrics and seconds."""
        from fewlabels.engine import train

        run_dir = self.out_dir / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        data = {**data, "name": name, "output_dir": str(self.out_dir)}
        print(f"\n== {name}: training {data['method']} ==", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = train(config_from_dict(data))
        return result.run_dir, result.metrics, time.perf_counter() - t0


def segmentation_stage(ctx: DemoContext) -> StageResult:
    """CCT vs the supervised-only baseline on ``scenes`` (10% of the images labeled)."""
    from fewlabels.engine import load_run
    from fewlabels.methods.segmentation import LogitsFn, SegmentationMethod, segmentation_figure

    steps = ctx.steps(400)
    common = {
        "seed": ctx.seed,
        "model": {"encoder": "small_cnn"},
        "data": {"dataset": "scenes", "labeled": 0.1, "scenes_val": 200},
        "train": {
            "steps": steps,
            "optimizer": "adam",
            "lr": 0.003,
            "weight_decay": 1e-4,
            "batch_size": 8,
            "checkpoint_every": steps,
            "log_every": 10,
        },
    }
    sup_dir, sup, sup_s = ctx.train("supervised-scenes", {"method": "supervised", **common})
    runs = [sup_dir]
    labels = "200 of 2000 images"
    rows = []
    if "cct" in available_methods():
        # the CPU recipe of configs/cct/scenes.yaml (chosen on a dev instance): w_u = 3, ramp-up over 40 % of the
        # steps, one aux decoder per perturbation type; the reference's w_u = 30 and K = 30 suit a pretrained encoder
        from fewlabels.methods.cct.perturbations import registered_perturbations

        one_each = {p.count_field: 1 for p in registered_perturbations()}
        recipe = {"loss": {"unsup_weight": 3.0, "rampup": 0.4}, "perturbations": one_each}
        cct_dir, cct, cct_s = ctx.train("cct-scenes", {"method": "cct", **common, **recipe})
        runs.append(cct_dir)
        rows.append(DemoRow("CCT", "supervised", "mIoU", cct["miou"], sup["miou"], labels, cct_s + sup_s))
    else:
        rows.append(DemoRow("supervised", "-", "mIoU", sup["miou"], float("nan"), labels, sup_s))
    loaded = [load_run(r, device="cpu") for r in runs]
    predictors: dict[str, LogitsFn] = {}
    methods: list[SegmentationMethod] = []
    for run in loaded:
        if not isinstance(run.method, SegmentationMethod):
            raise TypeError(f"{run.run_dir} is a {run.config.method!r} run, not a segmentation one")
        predictors[run.config.method] = run.method.predictor(run.model)
        methods.append(run.method)
    fig = segmentation_figure(
        predictors,
        methods[0].data.val,
        methods[0].data.num_classes,
        ctx.out_dir / "segmentation.png",
        loaded[0].device,
    )
    return StageResult(rows, {"scenes: image / ground truth / " + " / ".join(predictors): fig}, runs)


def _untrained_metrics(data: dict[str, Any]) -> dict[str, float]:
    """Evaluation of the freshly initialised network of a config (the "untrained" reference row)."""
    import torch

    from fewlabels.engine.rng import seed_everything
    from fewlabels.registry import get_method

    config = config_from_dict({**data, "name": "untrained"})
    method = get_method(config.method)(config)
    with torch.random.fork_rng():
        seed_everything(config.seed)
        model = method.build_model().eval()
    with torch.no_grad():
        return method.evaluate(model, torch.device("cpu"))


def clustering_stage(ctx: DemoContext) -> StageResult:
    """AC (orderings over features) vs the IIC baseline (same network without orderings) on ``scenes``."""
    from fewlabels.engine import load_run

    steps = ctx.steps(200)
    common: dict[str, Any] = {
        "seed": ctx.seed,
        "model": {"widths": [16, 32], "decoder_blocks": 1, "k": 6, "k_over": 0},
        "loss": {"displacement": 3, "lamb": 1.0, "collapsed": False},
        "data": {"dataset": "scenes", "scenes_n": 300, "scenes_size": 96, "input_size": 64, "eval_images": 100},
        "train": {
            "steps": steps,
            "batch_size": 8,
            "optimizer": "adam",
            "lr": 0.001,
            "weight_decay": 0.0,
            "scheduler": "constant",
            "checkpoint_every": steps,
            "log_every": 10,
        },
    }
    ac_cfg = {**common, "method": "ac", "model": {**common["model"], "mask_from": "features"}}
    iic_cfg = {
        **common,
        "method": "ac",
        "model": {**common["model"], "mask_from": "none"},
        "views": {"jitter": 0.3, "flip": True},
    }
    ac_dir, ac, ac_s = ctx.train("ac-scenes", ac_cfg)
    untrained = _untrained_metrics(ac_cfg)
    iic_dir, iic, iic_s = ctx.train("iic-scenes", iic_cfg)
    figures = {}
    for run_dir, title in ((ac_dir, "AC"), (iic_dir, "IIC")):
        run = load_run(run_dir, device="cpu")
        for caption, path in run.method.report_figures(run.model, ctx.out_dir / run_dir.name, run.device).items():
            figures[f"{title} clusters ({caption})"] = path
    row = DemoRow(
        "AC",
        "IIC",
        "pixel accuracy (Hungarian)",
        ac["pixel_accuracy"],
        iic["pixel_accuracy"],
        "none (labels only to evaluate)",
        ac_s + iic_s,
        f"untrained network: {untrained['pixel_accuracy']:.3f}",
        {"untrained": untrained["pixel_accuracy"]},
    )
    return StageResult([row], figures, [ac_dir, iic_dir])


SCL_NOTE = (
    "both views are the raw glyph: flips, crops and colour jitter change what a letter is, and cost CE and "
    "CE + SC alike 3-5 points on glyphs (docs/results.md, SCL loss ablation)"
)

#: The SCL stage's arms: name -> (label, loss weights, views). CE + SC sees two identical raw views of each glyph;
#: its control is CE on the same two views with lambda_sc = 0 (the same network passes per step), so that a margin
#: is the spatial term's and not the doubled batch's. With identical views and no dropout, that control computes the
#: gradient of CE on one view (the mean over duplicated rows) up to rounding: it is also the one-view baseline.
SCL_ARMS: dict[str, tuple[str, dict[str, float], list[str]]] = {
    "scl": ("CE + SC (two raw views)", {"lambda_cls": 1.0, "lambda_sc": 0.1, "lambda_gc": 0.0}, ["none", "none"]),
    "ce2": ("CE (two raw views)", {"lambda_cls": 1.0, "lambda_sc": 0.0, "lambda_gc": 0.0}, ["none", "none"]),
}
#: Pre-training seeds per arm (``ctx.seed``, ``ctx.seed + 1``, ...), steps per seed and test episodes per shot:
#: the spread over seeds instead of one seed's margin (+69 s of one-thread CPU over the former one-seed stage).
SCL_SEEDS = 3
SCL_STEPS = 50
SCL_EPISODES = 100


def _seed_summary(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and Student-t 95% half-width of per-seed values (NaN spread for one value)."""
    from fewlabels.metrics import mean_confidence_interval

    if len(values) < 2:
        return values[0], float("nan"), float("nan")
    mean, half = mean_confidence_interval(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return mean, std, half


def glyphs_pretraining(seed: int, steps: int) -> dict[str, Any]:
    """The CPU pre-training recipe on ``glyphs`` (conv-4, 32 px, batch 64, SGD 0.05 with the RFS step schedule
    scaled to ``steps``), without the method's loss and views; shared by the demo and ``benchmarks/scl_ablation.py``."""
    return {
        "seed": seed,
        "model": {"backbone": "conv4"},
        "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 24},
        "eval": {"shots": [1, 5], "val_episodes": 50},
        "train": {
            "steps": steps,
            "batch_size": 64,
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "scheduler": "step",
            "milestones": [0.667, 0.889],
            "max_grad_norm": 5.0,
            "checkpoint_every": steps,
            "log_every": 10,
        },
    }


def fewshot_stage(ctx: DemoContext) -> StageResult:
    """CE + SC vs CE on the same two raw views on ``glyphs``, :data:`SCL_SEEDS` pre-training seeds each; 5-way
    episodes on the novel script (Greek letters, never seen in training), 1 and 5 shots. The rows give the mean over
    seeds; the note gives the paired per-seed differences and their spread."""
    import torch

    from fewlabels.engine import load_run
    from fewlabels.engine.rng import seed_everything
    from fewlabels.methods.scl.fewshot_eval import fewshot_evaluate
    from fewlabels.methods.scl.method import FewShotMethod
    from fewlabels.registry import get_method
    from fewlabels.viz import save_histogram

    steps = ctx.steps(SCL_STEPS)
    seeds = [ctx.seed + i for i in range(SCL_SEEDS)]
    acc: dict[tuple[str, int], list[float]] = {(arm, k): [] for arm in SCL_ARMS for k in (1, 5)}
    seconds, runs, first_episodes = 0.0, [], None
    for seed in seeds:
        for arm, (_, loss, views) in SCL_ARMS.items():
            cfg = {**glyphs_pretraining(seed, steps), "method": "scl", "loss": loss, "augment": {"views": views}}
            run_dir, _, sec = ctx.train(f"{arm}-glyphs-seed{seed}", cfg)
            t0 = time.perf_counter()
            run = load_run(run_dir, device="cpu")
            if not isinstance(run.method, FewShotMethod):
                raise TypeError(f"{run_dir} is a {run.config.method!r} run, not a few-shot one")
            print(f"== {run_dir.name}: {SCL_EPISODES} test episodes per shot ==", file=sys.stderr, flush=True)
            res = fewshot_evaluate(
                run.model,
                run.method.split("test"),
                shots=(1, 5),
                episodes=SCL_EPISODES,
                seed=0,
                device=run.device,
                return_episodes=True,
            )
            seconds += sec + time.perf_counter() - t0
            for k in (1, 5):
                acc[(arm, k)].append(float(res[f"acc_{k}shot"]))
            if seed == seeds[0]:
                runs.append(run_dir)
                if arm == "scl":
                    first_episodes = res["episodes_1shot"]
    # The first seed's network before training: what pre-training has to beat on the novel script.
    t0 = time.perf_counter()
    untrained_cfg = {**glyphs_pretraining(seeds[0], steps), "method": "scl", "loss": SCL_ARMS["ce2"][1]}
    method = get_method("scl")(config_from_dict({**untrained_cfg, "name": "untrained"}))
    if not isinstance(method, FewShotMethod):
        raise TypeError(f"the scl method is a {type(method).__name__}, not a few-shot method")
    with torch.random.fork_rng():
        seed_everything(seeds[0])
        model = method.build_model().eval()
    untrained = fewshot_evaluate(
        model, method.split("test"), shots=(1, 5), episodes=SCL_EPISODES, seed=0, device=torch.device("cpu")
    )
    seconds += time.perf_counter() - t0
    rows = []
    for k in (1, 5):
        sc, ce2 = acc[("scl", k)], acc[("ce2", k)]
        diffs = [a - b for a, b in zip(sc, ce2, strict=True)]
        d_mean, _, d_half = _seed_summary(diffs)
        (sc_mean, sc_std, _), (ce_mean, ce_std, _) = _seed_summary(sc), _seed_summary(ce2)
        note = (
            f"mean of {len(seeds)} seeds ({steps} steps each; std {sc_std:.1f} vs {ce_std:.1f}); per seed "
            f"{', '.join(f'{d:+.1f}' for d in diffs)}, paired mean {d_mean:+.1f} +- {d_half:.1f} (95% t); "
            f"untrained conv-4 {untrained[f'acc_{k}shot']:.1f}"
        )
        if k == 1:
            note += f"; {SCL_NOTE}"
        rows.append(
            DemoRow(
                f"SCL {k}-shot",
                "CE (two raw views)",
                f"5-way accuracy % (novel script), mean of {len(seeds)} seeds",
                sc_mean,
                ce_mean,
                f"{k} per class (test)",
                seconds if k == 1 else 0.0,
                note,
                {
                    "seeds": seeds,
                    "steps": steps,
                    "episodes": SCL_EPISODES,
                    "scl": sc,
                    "ce2": ce2,
                    "difference": diffs,
                    "untrained": float(untrained[f"acc_{k}shot"]),
                },
            )
        )
    assert first_episodes is not None
    hist = save_histogram(
        first_episodes,
        ctx.out_dir / "scl_episodes.png",
        f"CE + SC (seed {seeds[0]}): accuracy of {SCL_EPISODES} five-way one-shot episodes",
        "episode accuracy",
    )
    return StageResult(rows, {"SCL episode accuracies (1-shot, first seed)": hist}, runs)


def text_stage(ctx: DemoContext) -> StageResult:
    """RelBitFit vs BitFit on Rotten Tomatoes (500 labeled snippets) with the packaged MiniLM."""
    from fewlabels.commands.peft import plot_run_bias_changes as plot_bias_change_comparison

    steps = ctx.steps(60)
    common: dict[str, Any] = {
        "seed": ctx.seed,
        "data": {"dataset": "rotten-tomatoes", "n_train": 500, "max_length": 64, "max_eval": 1000},
        "train": {
            "steps": steps,
            "batch_size": 16,
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 0.0,
            "scheduler": "constant",
            "max_grad_norm": 1.0,
            "checkpoint_every": steps,
            "log_every": 10,
        },
    }
    rel_dir, rel, rel_s = ctx.train(
        "relbitfit-rt", {**common, "method": "relbitfit", "model": {"variant": "relbitfit"}}
    )
    bit_dir, bit, bit_s = ctx.train("bitfit-rt", {**common, "method": "relbitfit", "model": {"variant": "bitfit"}})
    fig = plot_bias_change_comparison([bit_dir, rel_dir], ctx.out_dir / "bias_changes.png", ["BitFit", "RelBitFit"])
    row = DemoRow(
        "RelBitFit",
        "BitFit",
        "accuracy (1000 held-out)",
        rel["accuracy"],
        bit["accuracy"],
        "500 snippets",
        rel_s + bit_s,
    )
    return StageResult([row], {"per-layer bias change |b_after - b_before|": fig}, [rel_dir, bit_dir])


#: demo stages by method name, in the order they run
STAGES: dict[str, Callable[[DemoContext], StageResult]] = {
    "cct": segmentation_stage,
    "ac": clustering_stage,
    "scl": fewshot_stage,
    "relbitfit": text_stage,
}


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v:.3f}"


def summary_table(rows: list[DemoRow]) -> list[str]:
    """Markdown table; ``beats baseline`` compares the two values (higher is better for every demo metric)."""
    lines = [
        "| method | baseline | metric | method | baseline | beats baseline | labels used | time (s) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "-" if r.baseline_value != r.baseline_value else ("yes" if r.value > r.baseline_value else "no")
        seconds = f"{r.seconds:.0f}" if r.seconds else ""
        lines.append(
            f"| {r.method} | {r.baseline} | {r.metric} | {_fmt(r.value)} | {_fmt(r.baseline_value)} | {verdict} | "
            f"{r.labels} | {seconds} | {r.note} |"
        )
    return lines


def run_demo(
    out_dir: str | Path = "runs/demo", methods: list[str] | None = None, minutes: float | None = None, seed: int = 0
) -> Path:
    """Run the demo stages (all, or those named in ``methods``) and write ``out_dir/report.md``."""
    from fewlabels.viz import plot_curves

    chosen = methods or list(STAGES)
    unknown = [m for m in chosen if m not in STAGES]
    if unknown:
        from fewlabels.config import ConfigError

        raise ConfigError("--method", f"no demo stage for {unknown}; choose from {', '.join(STAGES)}")
    ctx = DemoContext(Path(out_dir), scale=(minutes / DEFAULT_MINUTES) if minutes else 1.0, seed=seed)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = [STAGES[m](ctx) for m in chosen]
    rows = [r for res in results for r in res.rows]
    lines = [
        "# fewlabels demo",
        "",
        "Each method next to its baseline, same data, budget and seed (CPU, offline).",
        "",
    ]
    lines += summary_table(rows) + ["", f"Total time: {time.perf_counter() - t0:.0f} s.", ""]
    for res in results:
        for title, path in res.figures.items():
            lines += [f"## {title}", "", f"![{title}]({path.relative_to(ctx.out_dir)})", ""]
        for run in res.runs:
            curves = plot_curves(run / "metrics.jsonl", ctx.out_dir / f"{run.name}-curves.png")
            lines += [
                f"### Training curves: {run.name}",
                "",
                f"![curves]({curves.relative_to(ctx.out_dir)})",
                "",
            ]
    report = ctx.out_dir / "report.md"
    report.write_text("\n".join(lines))
    (ctx.out_dir / "summary.json").write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    print("\n" + "\n".join(summary_table(rows)))
    print(f"\nreport: {report}")
    return report
