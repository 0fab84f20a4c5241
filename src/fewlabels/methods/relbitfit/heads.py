"""The classification head of a fine-tuned BERT/RoBERTa: what the classifier reads, and which head tensors train.

Three heads, chosen with ``model.head``:

- ``pooler`` (default, the head the thesis counts): BERT's pooler (``dense`` + tanh on the first token) and the
  ``classifier`` on top of it, both trainable; RoBERTa's own classification head (``classifier.dense`` + tanh +
  ``classifier.out_proj`` on ``<s>``), which is the same computation. For roberta-base this head is 590,592 +
  1,538 of BitFit's 694,274 trainable parameters. A BERT checkpoint whose pooler was never trained (the
  sentence-embedding MiniLM: bias exactly 0, weights of std 0.009) is no longer a frozen bottleneck.
- ``cls``: a linear classifier on the first token's last hidden state (no dense layer, no tanh).
- ``mean``: a linear classifier on the mean of the last hidden states over the attended tokens (the pooling
  sentence-embedding models are trained with).

``pooler`` keeps the model a stock ``transformers`` class (a BitFit run merges into a plain Hugging Face model
directory); ``cls`` and ``mean`` replace BERT's pooler by a parameter-free :class:`TokenPooler`, or RoBERTa's head by
:class:`PooledLinearHead`, so their models are rebuilt with :func:`apply_head` before loading a delta.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

__all__ = ["HEADS", "Head", "PooledLinearHead", "TokenPooler", "apply_head", "head_trainable_names"]

Head = Literal["pooler", "cls", "mean"]
HEADS: tuple[str, ...] = ("pooler", "cls", "mean")


class TokenPooler(nn.Module):
    """Parameter-free pooling of the last hidden states [B, L, D] -> [B, D]: the first token, or the masked mean.

    For ``mean`` the attention mask of the current forward is read from :attr:`mask`, which a pre-hook of the
    whole model sets (:func:`apply_head`); without a mask every position counts.
    """

    def __init__(self, mode: Literal["cls", "mean"]) -> None:
        super().__init__()
        if mode not in ("cls", "mean"):
            raise ValueError(f"unknown pooling {mode!r}; valid: cls, mean")
        self.mode = mode
        self.mask: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"mode={self.mode}"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Pool ``hidden_states`` [B, L, D] to [B, D]."""
        if self.mode == "cls":
            return hidden_states[:, 0]
        if self.mask is None:
            return hidden_states.mean(dim=1)
        weights = self.mask[:, : hidden_states.shape[1]].to(hidden_states.dtype).unsqueeze(-1)  # [B, L, 1]
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class PooledLinearHead(nn.Module):
    """RoBERTa's ``cls``/``mean`` head: pooling, dropout and one linear layer (``out_proj``, as in RoBERTa's own head).

    It takes the sequence output [B, L, D], as ``RobertaClassificationHead`` does, and returns logits [B, C].
    """

    def __init__(self, mode: Literal["cls", "mean"], hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.pool = TokenPooler(mode)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Logits [B, C] of the sequence output ``features`` [B, L, D]."""
        return self.out_proj(self.dropout(self.pool(features)))


def _kind(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in ("bert", "roberta"):
        return str(model_type)
    raise ValueError(f"{type(model).__name__}: the head choice supports BERT and RoBERTa sequence classifiers")


def _install_mask_hooks(model: nn.Module, pooler: TokenPooler) -> None:
    """Give ``pooler`` the attention mask of every forward of ``model`` (and drop it afterwards)."""

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:  # forward(input_ids, attention_mask, ...)
            mask = args[1]
        pooler.mask = mask

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        pooler.mask = None

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after)


def apply_head(model: nn.Module, head: str) -> nn.Module:
    """Give the sequence classifier ``model`` the ``head`` (in place); ``pooler`` leaves it unchanged.

    ``cls``/``mean`` on BERT replace ``bert.pooler`` by a :class:`TokenPooler` (the ``classifier`` stays); on
    RoBERTa they replace ``classifier`` by a :class:`PooledLinearHead` initialised like the model's own layers.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
    if head == "pooler":
        return model
    kind = _kind(model)
    config: Any = model.config
    mode: Literal["cls", "mean"] = "cls" if head == "cls" else "mean"
    if kind == "bert":
        pooler = TokenPooler(mode)
        model.get_submodule("bert").pooler = pooler
    else:
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        new = PooledLinearHead(mode, config.hidden_size, config.num_labels, float(dropout))
        ref = model.get_submodule("classifier.out_proj").get_parameter("weight")
        with torch.no_grad():
            new.out_proj.weight.normal_(0.0, float(config.initializer_range))
            new.out_proj.bias.zero_()
        model.classifier = new.to(device=ref.device, dtype=ref.dtype)
        pooler = new.pool
    if mode == "mean":
        _install_mask_hooks(model, pooler)
    return model


def head_trainable_names(model: nn.Module, head: str) -> set[str]:
    """Names of the head parameters that every variant trains.

    The parameters outside the pretrained base model (``classifier.*``), plus BERT's pooler dense layer under
    ``pooler``.
    """
    base = getattr(model, "base_model", model)
    names: set[str] = set()
    if base is not model:
        base_ids = {id(p) for p in base.parameters()}
        names = {name for name, p in model.named_parameters() if id(p) not in base_ids}
    if head == "pooler":
        pooler = getattr(base, "pooler", None)
        if isinstance(pooler, nn.Module):
            prefix = next(n for n, m in model.named_modules() if m is pooler)
            names |= {f"{prefix}.{n}" for n, _ in pooler.named_parameters()}
    return names
