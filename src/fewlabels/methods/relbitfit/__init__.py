"""RelBitFit: relative-bias fine-tuning of BERT/RoBERTa, with the BitFit and full fine-tuning baselines.

Importing the package registers the ``relbitfit`` method (``model.variant`` = full | bitfit | relbitfit) without
importing ``transformers`` (the heavy names below load on first use), and :func:`add_cli` offers:

    fewlabels peft-count MODEL_DIR_OR_CONFIG_JSON [--num-labels 2]   # trainable parameters of every variant
    fewlabels export-delta RUN_DIR [--which best|last] [--out PATH]   # trainable tensors only, a few MB
    fewlabels bias-changes RUN_DIR [RUN_DIR ...] --out FIG.png         # per-layer |b_after - b_before|
"""

from __future__ import annotations

import argparse
from typing import Any

from fewlabels.methods.relbitfit.config import RelBitFitConfig
from fewlabels.methods.relbitfit.method import RelBitFitMethod

#: public names served lazily (they import transformers, which takes seconds; registration must not)
_LAZY = {
    "FineTuning": "variants",
    "apply_fine_tuning": "variants",
    "RelativeBiasOptions": "patch",
    "add_relative_attention_bias": "patch",
    "format_parameter_table": "counts",
    "load_model_config": "counts",
    "trainable_parameter_count": "counts",
    "load_delta": "delta",
    "restore_fine_tuned": "delta",
    "save_delta": "delta",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FineTuning",
    "RelBitFitConfig",
    "RelBitFitMethod",
    "RelativeBiasOptions",
    "add_cli",
    "add_relative_attention_bias",
    "apply_fine_tuning",
    "format_parameter_table",
    "load_delta",
    "load_model_config",
    "restore_fine_tuned",
    "save_delta",
    "trainable_parameter_count",
]


def _cmd_peft_count(args: argparse.Namespace) -> int:
    from fewlabels.methods.relbitfit.counts import format_parameter_table, load_model_config

    config = load_model_config(args.model, num_labels=args.num_labels)
    print(format_parameter_table(config, num_positions=args.positions, rank=args.rank, l_max=args.l_max))
    return 0


def _cmd_export_delta(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fewlabels.engine import load_run

    run = load_run(args.run_dir, which=args.which, device="cpu")
    if not isinstance(run.method, RelBitFitMethod):
        raise SystemExit(f"{args.run_dir} is a {run.config.method!r} run, not a relbitfit one")
    path = run.method.save_delta(run.model, Path(args.run_dir))
    if args.out:
        path = Path(path).replace(Path(args.out))
    print(f"wrote {path} ({path.stat().st_size:,} bytes) from {run.weights.name}")
    return 0


def _cmd_bias_changes(args: argparse.Namespace) -> int:
    from fewlabels.methods.relbitfit.biases import plot_bias_change_comparison

    path = plot_bias_change_comparison(args.run_dirs, args.out, args.labels)
    print(f"wrote {path}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_cmd_peft_count)

    e = subparsers.add_parser("export-delta", help="save a relbitfit run's trainable tensors (the delta)")
    e.add_argument("run_dir", help="run directory of a relbitfit run")
    e.add_argument("--which", choices=["best", "last"], default="best", help="weights to export (default best)")
    e.add_argument("--out", default="", help="output file (default RUN_DIR/delta.safetensors)")
    e.set_defaults(func=_cmd_export_delta)

    b = subparsers.add_parser("bias-changes", help="plot per-layer bias changes of relbitfit runs (BitFit vs ...)")
    b.add_argument("run_dirs", nargs="+", help="run directories (e.g. a bitfit and a relbitfit run)")
    b.add_argument("--out", required=True, help="output PNG")
    b.add_argument("--labels", nargs="+", default=None, help="legend entries (default: the variants)")
    b.set_defaults(func=_cmd_bias_changes)
