"""RelBitFit: relative-bias fine-tuning of BERT/RoBERTa, with the BitFit and full fine-tuning baselines.

Importing the package registers the ``relbitfit`` method (``model.variant`` = full | bitfit | relbitfit) and
offers the ``fewlabels peft-count MODEL_DIR_OR_CONFIG_JSON`` command through :func:`add_cli`.
"""

from __future__ import annotations

import argparse

from fewlabels.methods.relbitfit.config import RelBitFitConfig
from fewlabels.methods.relbitfit.counts import (
    format_parameter_table,
    load_model_config,
    trainable_parameter_count,
)
from fewlabels.methods.relbitfit.delta import load_delta, restore_fine_tuned, save_delta
from fewlabels.methods.relbitfit.method import RelBitFitMethod
from fewlabels.methods.relbitfit.patch import RelativeBiasOptions, add_relative_attention_bias
from fewlabels.methods.relbitfit.variants import FineTuning, apply_fine_tuning

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
    "restore_fine_tuned",
    "save_delta",
    "trainable_parameter_count",
]


def _cmd_peft_count(args: argparse.Namespace) -> int:
    config = load_model_config(args.model, num_labels=args.num_labels)
    print(format_parameter_table(config, num_positions=args.positions, rank=args.rank, l_max=args.l_max))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``peft-count``: trainable parameters of every fine-tuning variant for a BERT/RoBERTa config."""
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
