"""``fewlabels peft-count | export-delta | predict-delta | bias-changes``: the parameter-efficient fine-tuning
tools of RelBitFit.

fewlabels peft-count MODEL_DIR_OR_CONFIG_JSON [--num-labels 2] [--head pooler]  # trainable parameters per variant
fewlabels export-delta RUN_DIR [--which best|last] [--out PATH]                  # trainable tensors only, a few MB
fewlabels export-delta RUN_DIR --merge OUT_DIR       # BitFit: a plain Hugging Face model directory
fewlabels predict-delta DELTA INPUT [INPUT ...] --base MODEL_DIR --out DIR      # predictions from a delta
fewlabels bias-changes RUN_DIR [RUN_DIR ...] --out FIG.png                        # per-layer |b_after - b_before|
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fewlabels.config import ConfigError

__all__ = ["add_commands", "plot_run_bias_changes"]


def plot_run_bias_changes(
    run_dirs: Sequence[str | Path], out_png: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Plot the per-layer bias changes of several relbitfit runs (e.g. a BitFit and a RelBitFit run).

    Args:
        run_dirs: run directories written by ``fewlabels train`` with ``method: relbitfit``.
        out_png: output figure.
        labels: legend entries (default: each run's variant label, e.g. ``bitfit``, ``relbitfit+pt``).
    """
    from fewlabels.engine import load_run
    from fewlabels.methods.relbitfit.biases import plot_bias_change_comparison
    from fewlabels.methods.relbitfit.method import RelBitFitMethod

    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    runs = []
    for run_dir in run_dirs:
        run = load_run(run_dir, device="cpu")
        if not isinstance(run.method, RelBitFitMethod):
            raise ValueError(f"{run_dir} is a {run.config.method!r} run, not a relbitfit one")
        runs.append((run.method.config, run.model))
    return plot_bias_change_comparison(runs, out_png, labels)


def cmd_peft_count(args: argparse.Namespace) -> int:
    """Print the trainable parameters of every fine-tuning variant for a BERT/RoBERTa config."""
    from fewlabels.methods.relbitfit.counts import format_parameter_table, load_model_config

    config = load_model_config(args.model, num_labels=args.num_labels)
    table = format_parameter_table(
        config, num_positions=args.positions, rank=args.rank, l_max=args.l_max, head=args.head
    )
    print(table)
    return 0


def cmd_export_delta(args: argparse.Namespace) -> int:
    """Write a relbitfit run's trainable tensors (the delta) to RUN_DIR/delta.safetensors or ``--out``; with
    ``--merge OUT_DIR``, write a BitFit run as a plain Hugging Face model directory instead."""
    from fewlabels.engine import load_run
    from fewlabels.methods.relbitfit.backbone import fine_tuning_of, model_dir
    from fewlabels.methods.relbitfit.method import RelBitFitMethod

    run = load_run(args.run_dir, which=args.which, device="cpu")
    if not isinstance(run.method, RelBitFitMethod):
        raise ConfigError("run_dir", f"{args.run_dir} is a {run.config.method!r} run, not a relbitfit one")
    if args.merge:
        from fewlabels.methods.relbitfit.delta import save_merged

        method = run.method
        names = method.prediction_settings().label_names
        try:
            out = save_merged(run.model, fine_tuning_of(method.config), args.merge, model_dir(method.config), names)
        except ValueError as err:
            raise ConfigError("--merge", str(err)) from None
        print(f"wrote {out} (a transformers model directory) from {run.weights.name}")
        return 0
    path = run.method.save_delta(run.model, Path(args.run_dir))
    if args.out:
        path = Path(path).replace(Path(args.out))
    print(f"wrote {path} ({path.stat().st_size:,} bytes) from {run.weights.name}")
    return 0


def cmd_predict_delta(args: argparse.Namespace) -> int:
    """Label text files with a delta file on top of its base model (no run directory needed)."""
    import torch

    from fewlabels.engine.run import pick_device
    from fewlabels.methods.relbitfit.backbone import quiet_transformers
    from fewlabels.methods.relbitfit.delta import read_delta_metadata, restore_fine_tuned
    from fewlabels.methods.relbitfit.predict import PredictionSettings, predict_files

    info = read_delta_metadata(args.delta)
    base = Path(args.base or info.get("base_model") or "").expanduser()
    if not (base / "config.json").is_file():
        raise ConfigError("--base", f"{base} is not the base model directory of {args.delta} (no config.json)")
    settings = PredictionSettings.from_metadata(
        info, max_length=args.max_length, text_column=args.text_column, pair_column=args.pair_column
    )
    quiet_transformers()
    from transformers import AutoTokenizer

    device = pick_device(args.device)
    model = restore_fine_tuned(args.delta, base).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    out = Path(args.out)
    with torch.no_grad():
        written = predict_files(model, tokenizer, [Path(p) for p in args.inputs], out, device, settings)
    print(f"wrote {len(written)} files to {out}")
    return 0


def cmd_bias_changes(args: argparse.Namespace) -> int:
    """Plot the per-layer bias changes of the given relbitfit runs into ``--out``."""
    path = plot_run_bias_changes(args.run_dirs, args.out, args.labels)
    print(f"wrote {path}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``peft-count``, ``export-delta`` and ``bias-changes`` (see the module docstring)."""
    p = subparsers.add_parser(
        "peft-count",
        help="trainable parameters of full / BitFit / RelBitFit (+PT, +LR, +Clip) for a BERT/RoBERTa config",
    )
    p.add_argument("model", help="model directory (with config.json) or a config JSON file with model_type")
    p.add_argument("--num-labels", type=int, default=2, help="classes of the task head (default 2)")
    p.add_argument("--positions", type=int, default=128, help="N, relative distances (default 128)")
    p.add_argument("--rank", type=int, default=64, help="d' of the low-rank table (default 64)")
    p.add_argument("--l-max", type=int, default=32, help="N under Clip (default 32)")
    p.add_argument(
        "--head",
        choices=["pooler", "cls", "mean"],
        default="pooler",
        help="task head counted (default pooler: BERT pooler dense + classifier, RoBERTa's head, as the thesis)",
    )
    p.set_defaults(func=cmd_peft_count)

    e = subparsers.add_parser("export-delta", help="save a relbitfit run's trainable tensors (the delta)")
    e.add_argument("run_dir", help="run directory of a relbitfit run")
    e.add_argument("--which", choices=["best", "last"], default="best", help="weights to export (default best)")
    e.add_argument("--out", default="", help="output file (default RUN_DIR/delta.safetensors)")
    e.add_argument(
        "--merge",
        default="",
        metavar="OUT_DIR",
        help="BitFit/full with the pooler head: write base + delta as a plain Hugging Face model directory",
    )
    e.set_defaults(func=cmd_export_delta)

    d = subparsers.add_parser("predict-delta", help="label text files with a delta file + its base model")
    d.add_argument("delta", help="delta file written by export-delta")
    d.add_argument("inputs", nargs="+", help=".txt (one example per line), .csv/.tsv (header) or .jsonl files")
    d.add_argument("--base", default="", help="base model directory (default: the one recorded in the delta)")
    d.add_argument("--out", required=True, help="output folder (<stem>.predictions.jsonl per input)")
    d.add_argument("--max-length", type=int, default=None, help="tokens per example (default: the training one)")
    d.add_argument("--text-column", default=None, help="CSV/JSONL text column (default: the training one)")
    d.add_argument("--pair-column", default=None, help="CSV/JSONL second-sentence column (default: training's)")
    d.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    d.set_defaults(func=cmd_predict_delta)

    b = subparsers.add_parser("bias-changes", help="plot per-layer bias changes of relbitfit runs (BitFit vs ...)")
    b.add_argument("run_dirs", nargs="+", help="run directories (e.g. a bitfit and a relbitfit run)")
    b.add_argument("--out", required=True, help="output PNG")
    b.add_argument("--labels", nargs="+", default=None, help="legend entries (default: the variants)")
    b.set_defaults(func=cmd_bias_changes)
