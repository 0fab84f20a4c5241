"""How much fine-tuning moved the biases of each layer (the thesis' BitFit vs RelBitFit figure).

``d_l = mean over the bias entries of encoder layer l of |b_after - b_before|``. The key bias is left out for
every
variant: RelBitFit freezes it (it cancels in the softmax) and BitFit's updates to it change nothing, so
including it would only dilute the comparison.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fewlabels.methods.relbitfit.config import RelBitFitConfig

__all__ = ["bias_changes_per_layer", "load_base_model", "plot_bias_change_comparison"]

_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def bias_changes_per_layer(before: nn.Module, after: nn.Module) -> list[float]:
    """``[d_0, ..., d_{L-1}]`` for two models with the same parameter names (``after`` may be patched).

    Args:
        before: the pretrained model (any head).
        after: the fine-tuned model.
    """
    reference = dict(before.named_parameters())
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for name, param in after.named_parameters():
        match = _LAYER.search(name)
        if match is None or not name.endswith(".bias") or name.endswith("attention.self.key.bias"):
            continue
        if name not in reference:
            raise KeyError(f"{name} is not in the reference model: are both the same architecture?")
        layer = int(match.group(1))
        delta = (param.detach().float().cpu() - reference[name].detach().float().cpu()).abs()
        sums[layer] = sums.get(layer, 0.0) + float(delta.sum())
        counts[layer] = counts.get(layer, 0) + delta.numel()
    if not sums:
        raise ValueError("no encoder-layer biases found (expected names like 'bert.encoder.layer.0....bias')")
    return [sums[i] / counts[i] for i in sorted(sums)]


def load_base_model(config: RelBitFitConfig) -> nn.Module:
    """The unmodified pretrained model of a run config (the head is irrelevant for bias changes)."""
    from transformers import AutoModelForSequenceClassification

    from fewlabels.methods.relbitfit.method import model_dir, quiet_transformers

    quiet_transformers()
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir(config)), local_files_only=True)


def plot_bias_change_comparison(
    run_dirs: Sequence[str | Path], out_png: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Plot per-layer bias changes of several runs (e.g. a BitFit and a RelBitFit run) against their base
    model.

    Args:
        run_dirs: run directories written by ``fewlabels train`` with ``method: relbitfit``.
        out_png: output figure.
        labels: legend entries (default: each run's variant label, e.g. ``bitfit``, ``relbitfit+pt``).
    """
    from fewlabels.engine import load_run
    from fewlabels.methods.relbitfit.method import fine_tuning_of
    from fewlabels.viz import plot_bias_changes

    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    changes: dict[str, list[float]] = {}
    for i, run_dir in enumerate(run_dirs):
        run = load_run(run_dir, device="cpu")
        if run.config.method != "relbitfit":
            raise ValueError(f"{run_dir} is a {run.config.method!r} run, not a relbitfit one")
        label = labels[i] if labels is not None else fine_tuning_of(run.config).label  # type: ignore[arg-type]
        with torch.no_grad():
            changes[label] = bias_changes_per_layer(load_base_model(run.config), run.model)  # type: ignore[arg-type]
    return plot_bias_changes(changes, out_png, "mean |b_after - b_before| per layer")
