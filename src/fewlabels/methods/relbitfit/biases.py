"""How much fine-tuning moved the biases of each layer (the thesis' BitFit vs RelBitFit figure).

``d_l = mean over the bias entries of encoder layer l of |b_after - b_before|``. The key bias is left out for every
variant: RelBitFit freezes it (it cancels in the softmax) and BitFit's updates to it change nothing, so including it
would only dilute the comparison. The functions take models, not run directories: loading a run is the command
layer's job (``fewlabels bias-changes``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fewlabels.methods.relbitfit.backbone import fine_tuning_of, load_base_model
from fewlabels.methods.relbitfit.config import RelBitFitConfig

__all__ = ["bias_changes_per_layer", "compare_bias_changes", "plot_bias_change_comparison"]

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


def compare_bias_changes(
    runs: Sequence[tuple[RelBitFitConfig, nn.Module]], labels: Sequence[str] | None = None
) -> dict[str, list[float]]:
    """Per-layer bias changes of several fine-tuned models, each against the pretrained model of its config.

    Args:
        runs: ``(config, fine-tuned model)`` pairs, e.g. a BitFit and a RelBitFit run.
        labels: legend entries (default: each run's variant label, e.g. ``bitfit``, ``relbitfit+pt``).

    Returns:
        ``{label: [d_0, ..., d_{L-1}]}`` in the order of ``runs``.
    """
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    changes: dict[str, list[float]] = {}
    for i, (config, model) in enumerate(runs):
        label = labels[i] if labels is not None else fine_tuning_of(config).label
        with torch.no_grad():
            changes[label] = bias_changes_per_layer(load_base_model(config), model)
    return changes


def plot_bias_change_comparison(
    runs: Sequence[tuple[RelBitFitConfig, nn.Module]], out_png: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Plot :func:`compare_bias_changes` of several runs (e.g. a BitFit and a RelBitFit run) into ``out_png``."""
    from fewlabels.viz import plot_bias_changes

    return plot_bias_changes(compare_bias_changes(runs, labels), out_png, "mean |b_after - b_before| per layer")
