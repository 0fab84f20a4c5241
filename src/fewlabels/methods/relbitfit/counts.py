"""Trainable-parameter counts of every fine-tuning variant, for any BERT/RoBERTa config (the thesis table).

The counts come from the real code path, not from a formula: the sequence-classification model is built on the
``meta`` device (shapes only, no memory, no initialisation cost), patched and frozen exactly as in training,
and its trainable parameters are summed. For roberta-base with a 2-class head this gives 124,647,170 (full),
694,274 (BitFit), 1,883,138 (RelBitFit), 784,898 (+PT), 760,834 (+LR), 984,578 (+Clip), 736,642 (+PT+LR+Clip),
with the default ``pooler`` head (RoBERTa's 768 x 768 dense layer + output layer, 592,130 of them, included as the
thesis counts it; for BERT models the pooler dense layer + classifier). ``cls``/``mean`` heads count one linear
layer instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig

from fewlabels.methods.relbitfit.heads import head_trainable_names
from fewlabels.methods.relbitfit.variants import FineTuning, apply_fine_tuning

__all__ = ["TABLE_VARIANTS", "format_parameter_table", "load_model_config", "trainable_parameter_count"]

#: rows of the thesis' parameter table
TABLE_VARIANTS: tuple[str, ...] = (
    "full",
    "bitfit",
    "relbitfit",
    "relbitfit+pt",
    "relbitfit+lr",
    "relbitfit+clip",
    "relbitfit+pt+lr+clip",
)


def _meta_model(config: PretrainedConfig, fine_tuning: FineTuning) -> torch.nn.Module:
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
        return apply_fine_tuning(model, fine_tuning)


def trainable_parameter_count(
    config: PretrainedConfig,
    variant: str,
    num_positions: int = 128,
    rank: int = 64,
    l_max: int = 32,
    head: str = "pooler",
) -> int:
    """Number of trainable parameters of ``variant`` for a sequence-classification model of ``config``.

    Args:
        config: a BERT or RoBERTa ``transformers`` config (``num_labels`` sets the head size).
        variant: ``full``, ``bitfit`` or ``relbitfit[+pt][+lr][+clip]``.
        num_positions: N of the relative tables; ``rank``: d' of LR; ``l_max``: N under Clip.
        head: ``pooler`` (the thesis' count), ``cls`` or ``mean`` (see :mod:`.heads`).
    """
    fine_tuning = FineTuning.parse(variant, num_positions=num_positions, rank=rank, l_max=l_max, head=head)
    model = _meta_model(config, fine_tuning)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def format_parameter_table(
    config: PretrainedConfig, num_positions: int = 128, rank: int = 64, l_max: int = 32, head: str = "pooler"
) -> str:
    """Plain-text table: variant, trainable parameters, % of the full model, change relative to BitFit.

    The counts include the task head (``head``); the first line says which, and how many parameters it has.
    """
    counts = {
        v: trainable_parameter_count(config, v, num_positions=num_positions, rank=rank, l_max=l_max, head=head)
        for v in TABLE_VARIANTS
    }
    head_size = _head_size(config, head)
    total, bitfit = counts["full"], counts["bitfit"]
    name = getattr(config, "model_type", "model")
    lines = [
        f"{name}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, "
        f"{config.num_labels} labels; N={num_positions}, d'={rank}, L_max={l_max}; "
        f"head {head} ({head_size:,} trainable parameters, included below)",
        f"{'variant':<22}{'trainable':>14}{'% of full':>11}{'vs BitFit':>11}",
    ]
    for variant, count in counts.items():
        change = "" if variant == "full" else f"{100.0 * (count - bitfit) / bitfit:+.0f}%"
        lines.append(f"{variant:<22}{count:>14,}{100.0 * count / total:>10.2f}%{change:>11}")
    return "\n".join(lines)


def _head_size(config: PretrainedConfig, head: str) -> int:
    """Trainable parameters of the task head alone (those outside the biases that BitFit trains anyway included)."""
    model = _meta_model(config, FineTuning("bitfit", head=head))  # type: ignore[arg-type]
    names = head_trainable_names(model, head)
    return sum(p.numel() for n, p in model.named_parameters() if n in names)


def load_model_config(path: str | Path, num_labels: int | None = None) -> PretrainedConfig:
    """A ``transformers`` config from a model directory or a ``config.json`` file (needs ``model_type``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} has no config.json; pass a model directory or a config JSON file")
        config = AutoConfig.from_pretrained(str(p))
    elif p.is_file():
        data = json.loads(p.read_text())
        if "model_type" not in data:
            raise ValueError(f'{p}: a config JSON needs \'model_type\' (e.g. "bert" or "roberta")')
        config = AutoConfig.for_model(**data)
    else:
        raise FileNotFoundError(f"model directory or config JSON not found: {p}")
    if num_labels is not None:
        config.num_labels = num_labels
    return config
