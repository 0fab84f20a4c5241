"""Save and restore a fine-tuned model as a delta: only its trainable tensors, on top of the base weights.

The file is a safetensors archive holding every trainable tensor (biases, relative tables, the whole task
head) plus any frozen tensor that the base checkpoint does not hold (``extra``: e.g. a pooler that
``from_pretrained`` initialised randomly), and JSON metadata with the :class:`FineTuning`, the label count and
the base model's type. Restoring rebuilds the base model, applies the same patch and loads the delta, and
refuses a delta that misses any trainable tensor of the rebuilt model: peft silently dropped biases
(peft #3306) and heads (peft #310, #577) on save. For a BERT-base-size model BitFit/RelBitFit deltas are a few
MB (fp32), against ~440 MB for the full weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fewlabels.methods.relbitfit.variants import FineTuning, apply_fine_tuning

__all__ = ["DELTA_FORMAT", "load_delta", "read_delta_metadata", "restore_fine_tuned", "save_delta"]

DELTA_FORMAT = "fewlabels-relbitfit-delta/1"


def save_delta(
    model: nn.Module,
    path: str | Path,
    fine_tuning: FineTuning,
    extra: Iterable[str] = (),
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the trainable tensors of ``model`` (+ the named ``extra`` ones) to ``path`` atomically.

    Args:
        model: the fine-tuned (unwrapped) model.
        path: output ``.safetensors`` file.
        fine_tuning: the variant the model was prepared with; stored in the metadata.
        extra: names of frozen parameters/buffers to store too (tensors the base checkpoint lacks).
        metadata: more JSON-serialisable facts to store (e.g. task, tokenizer directory).
    """
    named: dict[str, torch.Tensor] = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    wanted = {n for n, p in model.named_parameters() if p.requires_grad} | set(extra)
    missing = sorted(wanted - set(named))
    if missing:
        raise KeyError(f"cannot save unknown tensors {missing}")
    tensors = {n: named[n].detach().to("cpu").contiguous() for n in sorted(wanted)}
    config = getattr(model, "config", None)
    info = {
        "format": DELTA_FORMAT,
        "fine_tuning": fine_tuning.to_dict(),
        "num_labels": getattr(config, "num_labels", None),
        "model_type": getattr(config, "model_type", None),
        "extra": sorted(set(extra)),
        **(metadata or {}),
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"fewlabels": json.dumps(info)})
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out


def read_delta_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a delta file (``fine_tuning``, ``num_labels``, ``model_type``, ...)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"delta file not found: {p}")
    with safe_open(str(p), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("fewlabels")
    if raw is None:
        raise ValueError(f"{p} is not a fewlabels RelBitFit delta (no 'fewlabels' metadata)")
    info = json.loads(raw)
    if info.get("format") != DELTA_FORMAT:
        raise ValueError(f"{p}: unsupported delta format {info.get('format')!r} (expected {DELTA_FORMAT})")
    return info


def load_delta(model: nn.Module, path: str | Path, prepare: bool = True) -> nn.Module:
    """Load a delta onto ``model`` holding the base weights; returns the fine-tuned model (same object).

    Args:
        model: the base model (unpatched if ``prepare``, else already prepared with the delta's variant).
        path: the delta file written by :func:`save_delta`.
        prepare: apply the stored :class:`FineTuning` (patch + requires_grad) before loading.

    Raises:
        ValueError: the delta misses a trainable tensor of the prepared model, names an unknown tensor, or a
        shape
            differs.
    """
    info = read_delta_metadata(path)
    fine_tuning = FineTuning(**info["fine_tuning"])
    if prepare:
        apply_fine_tuning(model, fine_tuning)
    named: dict[str, torch.Tensor] = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        unknown = sorted(keys - set(named))
        absent = sorted(trainable - keys)
        if unknown or absent:
            raise ValueError(
                f"{path} does not match the model: unknown tensors {unknown[:5]}, missing trainable tensors "
                f"{absent[:5]} (was it saved from another architecture or variant?)"
            )
        with torch.no_grad():
            for name in sorted(keys):
                value = fh.get_tensor(name)
                target = named[name]
                if target.shape != value.shape:
                    raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, model has {tuple(target.shape)}")
                target.copy_(value.to(device=target.device, dtype=target.dtype))
    return model


def restore_fine_tuned(
    path: str | Path, base_dir: str | Path, attn_implementation: str = "sdpa", **overrides: Any
) -> nn.Module:
    """Rebuild the fine-tuned sequence classifier from a delta file and the base model directory
    ``base_dir``."""
    from transformers import AutoModelForSequenceClassification

    info = read_delta_metadata(path)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation, **overrides}
    if info.get("num_labels") is not None:
        kwargs.setdefault("num_labels", info["num_labels"])
    model = AutoModelForSequenceClassification.from_pretrained(str(base_dir), **kwargs)
    return load_delta(model, path, prepare=True)
