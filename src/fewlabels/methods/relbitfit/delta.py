"""Save and restore a fine-tuned model as a delta: only its trainable tensors, on top of the base weights.

The file is a safetensors archive holding every trainable tensor (biases, relative tables, the whole task head) plus any
frozen tensor that the base checkpoint does not hold (``extra``: e.g. a pooler that ``from_pretrained`` initialised
randomly), and JSON metadata with the :class:`FineTuning`, the label count and the base model's type. Restoring rebuilds
the base model, applies the same patch and loads the delta, and refuses a delta that misses any trainable tensor of the
rebuilt model: peft silently dropped biases (peft #3306) and heads (peft #310, #577) on save. For a BERT-base-size model
BitFit/RelBitFit deltas are a few MB (fp32), against ~440 MB for the full weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fewlabels.files import share_like_open
from fewlabels.methods.relbitfit.variants import FineTuning, apply_fine_tuning

__all__ = [
    "DELTA_FORMAT",
    "delta_tensors",
    "load_delta",
    "load_tensors",
    "read_delta_metadata",
    "restore_fine_tuned",
    "save_delta",
    "save_merged",
]

#: version 2: the head choice (``pooler`` trains BERT's pooler) and the thesis' relative term (no ``b_q``) are in
#: the stored FineTuning; a version 1 delta was made with a frozen pooler and ``b_q`` in the term.
DELTA_FORMAT = "fewlabels-relbitfit-delta/2"


def delta_tensors(model: nn.Module, extra: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The trainable tensors of ``model`` plus the named ``extra`` ones (detached, on the CPU), by name.

    ``extra`` names that the model does not have (e.g. a pooler that the ``cls`` head removed) are skipped.
    """
    named: dict[str, torch.Tensor] = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    wanted = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n in extra if n in named}
    return {n: named[n].detach().to("cpu").contiguous() for n in sorted(wanted)}


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], where: str | Path) -> nn.Module:
    """Copy ``tensors`` into ``model`` (prepared with the same variant) in place and return it.

    Raises:
        ValueError: a tensor is unknown to the model or has another shape, or a trainable tensor of the model is
            missing (peft lost biases and heads this way: peft #3306, #310, #577). ``where`` names the source.
    """
    named: dict[str, torch.Tensor] = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    unknown = sorted(set(tensors) - set(named))
    absent = sorted(trainable - set(tensors))
    if unknown or absent:
        raise ValueError(
            f"{where} does not match the model: unknown tensors {unknown[:5]}, missing trainable tensors "
            f"{absent[:5]} (was it saved from another architecture, variant or head?)"
        )
    with torch.no_grad():
        for name in sorted(tensors):
            value, target = tensors[name], named[name]
            if target.shape != value.shape:
                raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, model has {tuple(target.shape)}")
            target.copy_(value.to(device=target.device, dtype=target.dtype))
    return model


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
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    missing = sorted(set(extra) - names)
    if missing:
        raise KeyError(f"cannot save unknown tensors {missing}")
    tensors = delta_tensors(model, extra)
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
    share_like_open(tmp)  # safetensors writes 0600; a delta is shared like the run's other files
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
        raise ValueError(
            f"{p}: unsupported delta format {info.get('format')!r} (expected {DELTA_FORMAT}); a version 1 delta "
            "was trained with a frozen pooler and b_q in the relative term: retrain it with this version"
        )
    return info


def load_delta(model: nn.Module, path: str | Path, prepare: bool = True) -> nn.Module:
    """Load a delta onto ``model`` holding the base weights; returns the fine-tuned model (same object).

    Args:
        model: the base model (unpatched if ``prepare``, else already prepared with the delta's variant).
        path: the delta file written by :func:`save_delta`.
        prepare: apply the stored :class:`FineTuning` (patch + requires_grad) before loading.

    Raises:
        ValueError: the delta misses a trainable tensor of the prepared model, names an unknown tensor, or a shape
            differs.
    """
    info = read_delta_metadata(path)
    fine_tuning = FineTuning(**info["fine_tuning"])
    if prepare:
        apply_fine_tuning(model, fine_tuning)
    with safe_open(str(path), framework="pt") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    return load_tensors(model, tensors, path)


def restore_fine_tuned(
    path: str | Path, base_dir: str | Path, attn_implementation: str = "sdpa", **overrides: Any
) -> nn.Module:
    """Rebuild the fine-tuned sequence classifier from a delta file and the base model directory ``base_dir``."""
    from transformers import AutoModelForSequenceClassification

    info = read_delta_metadata(path)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation, **overrides}
    if info.get("num_labels") is not None:
        kwargs.setdefault("num_labels", info["num_labels"])
    model = AutoModelForSequenceClassification.from_pretrained(str(base_dir), **kwargs)
    return load_delta(model, path, prepare=True)


def save_merged(
    model: nn.Module,
    fine_tuning: FineTuning,
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    label_names: Sequence[str] | None = None,
) -> Path:
    """Write a fine-tuned BitFit (or full) model as a plain Hugging Face model directory that ``transformers``
    loads without fewlabels (``AutoModelForSequenceClassification.from_pretrained(out_dir)``).

    BitFit only changes values of the stock architecture's tensors, so the merged weights (base + delta) are an
    ordinary checkpoint; the tokenizer of ``tokenizer_dir`` is copied beside them and ``label_names`` become the
    config's ``id2label``.

    Raises:
        ValueError: for RelBitFit, whose relative tables change the attention computation itself (no stock
            ``transformers`` class holds them: load the delta with :func:`restore_fine_tuned`, which applies the
            patch), and for the ``cls``/``mean`` heads, which are not a stock head either.
    """
    if fine_tuning.variant == "relbitfit":
        raise ValueError(
            "a RelBitFit model cannot be merged into a plain transformers model: its relative tables change the "
            "attention scores. Load it with fewlabels.methods.relbitfit.restore_fine_tuned(DELTA, BASE_DIR), "
            "which rebuilds the base model and applies the patch (docs/relbitfit.md, 'Using the result')"
        )
    if fine_tuning.head != "pooler":
        raise ValueError(
            f"the {fine_tuning.head!r} head is not a stock transformers head; only model.head=pooler merges into a "
            "plain Hugging Face model directory"
        )
    from transformers import AutoTokenizer, PreTrainedModel

    assert isinstance(model, PreTrainedModel), "a relbitfit run's model is a transformers sequence classifier"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: Any = model.config
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True).save_pretrained(str(out))
    return out
