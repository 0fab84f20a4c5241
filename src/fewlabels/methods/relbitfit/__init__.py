"""RelBitFit: relative-bias fine-tuning of BERT/RoBERTa, with the BitFit and full fine-tuning baselines.

Importing the package registers the ``relbitfit`` method (``model.variant`` = full | bitfit | relbitfit) without
importing ``transformers`` (the heavy names below load on first use). Its commands live in the command layer
(:mod:`fewlabels.commands.peft`):

    fewlabels peft-count MODEL_DIR_OR_CONFIG_JSON [--num-labels 2] [--head pooler|cls|mean]  # trainable parameters
    fewlabels export-delta RUN_DIR [--which best|last] [--out PATH]   # trainable tensors only, a few MB
    fewlabels export-delta RUN_DIR --merge OUT_DIR                    # BitFit: a plain Hugging Face model directory
    fewlabels predict-delta DELTA INPUT... --base MODEL_DIR --out DIR  # predictions from a delta + its base model
    fewlabels bias-changes RUN_DIR [RUN_DIR ...] --out FIG.png         # per-layer |b_after - b_before|
"""

from __future__ import annotations

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
    "save_merged": "delta",
}


def __getattr__(name: str) -> Any:
    """Serve a name of ``_LAZY`` from its module, importing that module (and transformers) on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FineTuning",
    "RelBitFitConfig",
    "RelBitFitMethod",
    "RelativeBiasOptions",
    "add_relative_attention_bias",
    "apply_fine_tuning",
    "format_parameter_table",
    "load_delta",
    "load_model_config",
    "restore_fine_tuned",
    "save_delta",
    "save_merged",
    "trainable_parameter_count",
]
