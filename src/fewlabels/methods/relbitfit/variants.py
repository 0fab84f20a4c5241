"""Which parameters each fine-tuning variant trains: full, BitFit, RelBitFit (+PT, +LR, +Clip).

- ``full``: every parameter.
- ``bitfit``: every bias of the pretrained encoder (attention q/k/v/output, FFN, LayerNorm betas incl. the
  embedding LayerNorm, pooler bias) plus the whole task head of :mod:`.heads`, which is always trainable: with the
  default ``pooler`` head, BERT's pooler dense layer + ``classifier`` or RoBERTa's ``classifier.dense`` +
  ``classifier.out_proj`` (the thesis' counts); with ``cls``/``mean``, one linear layer.
- ``relbitfit``: ``bitfit`` without the key biases ``b_k`` (they cancel in the row softmax:
  ``z_i W_q b_k^T + b_q b_k^T`` does not depend on j) plus the relative tables of :mod:`.patch`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

from fewlabels.methods.relbitfit.heads import HEADS, Head, apply_head, head_trainable_names
from fewlabels.methods.relbitfit.patch import (
    RelativeBiasOptions,
    add_relative_attention_bias,
    find_self_attentions,
)

__all__ = ["VARIANTS", "FineTuning", "apply_fine_tuning", "head_parameter_names", "trainable_names"]

Variant = Literal["full", "bitfit", "relbitfit"]
VARIANTS: tuple[str, ...] = ("full", "bitfit", "relbitfit")
_OPTIONS = ("pt", "lr", "clip")


@dataclass(frozen=True)
class FineTuning:
    """A fine-tuning variant and its relative-table options (the latter only matter for ``relbitfit``).

    Attributes:
        variant: ``full``, ``bitfit`` or ``relbitfit``.
        num_positions: N, relative distances with their own entry (the max sequence length, 128).
        relative_index: ``absolute`` (N entries) or ``signed`` (2N - 1).
        pt: one table shared by all layers.
        lr: low-rank key table ``R = E U``, inner size ``rank``.
        clip: N = ``l_max`` instead of ``num_positions``.
        rank: d' of LR.
        l_max: N under Clip.
        head: ``pooler`` (trainable pooler/RoBERTa head), ``cls`` or ``mean`` (see :mod:`.heads`).
        query_bias: RelBitFit's relative key term reads ``q_i`` with ``b_q`` (default: the thesis' ``z_i W_q``).
    """

    variant: Variant = "relbitfit"
    num_positions: int = 128
    relative_index: Literal["absolute", "signed"] = "absolute"
    pt: bool = False
    lr: bool = False
    clip: bool = False
    rank: int = 64
    l_max: int = 32
    head: Head = "pooler"
    query_bias: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; valid: {', '.join(HEADS)}")
        if self.variant != "relbitfit" and (self.pt or self.lr or self.clip):
            raise ValueError(f"pt/lr/clip are options of 'relbitfit', not of {self.variant!r}")

    @classmethod
    def parse(cls, spec: str, **defaults: Any) -> FineTuning:
        """``"relbitfit+pt+lr+clip"`` -> FineTuning(variant="relbitfit", pt=True, lr=True, clip=True,
        **defaults)."""
        variant, *options = spec.strip().lower().split("+")
        unknown = [o for o in options if o not in _OPTIONS]
        if variant not in VARIANTS or unknown:
            raise ValueError(
                f"unknown variant {spec!r}: write full, bitfit or relbitfit[+pt][+lr][+clip] (options: {_OPTIONS})"
            )
        return cls(variant=variant, **{o: True for o in options}, **defaults)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        """Canonical name, e.g. ``relbitfit+pt+clip``."""
        return "+".join([self.variant, *(o for o in _OPTIONS if getattr(self, o))])

    def relative_options(self) -> RelativeBiasOptions:
        return RelativeBiasOptions(
            num_positions=self.l_max if self.clip else self.num_positions,
            relative_index=self.relative_index,
            tie_layers=self.pt,
            rank=self.rank if self.lr else 0,
            query_bias=self.query_bias,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def head_parameter_names(model: nn.Module, head: str = "pooler") -> set[str]:
    """Names of the task head's parameters (always trainable): see :func:`.heads.head_trainable_names`."""
    return head_trainable_names(model, head)


def trainable_names(model: nn.Module, fine_tuning: FineTuning) -> set[str]:
    """Parameter names that ``fine_tuning`` trains in ``model`` (already patched for ``relbitfit``)."""
    names = dict(model.named_parameters())
    if fine_tuning.variant == "full":
        return set(names)
    chosen = {n for n in names if n.endswith(".bias") or n == "bias"} | head_parameter_names(model, fine_tuning.head)
    if fine_tuning.variant == "relbitfit":
        attentions: list[Any] = find_self_attentions(model)
        keys = [a.key for a in attentions]
        key_biases = {id(k.bias) for k in keys if k.bias is not None}
        chosen = {n for n in chosen if id(names[n]) not in key_biases}
        chosen |= {n for n in names if ".relative_attention." in f".{n}"}
    return chosen


def apply_fine_tuning(model: nn.Module, fine_tuning: FineTuning) -> nn.Module:
    """Give ``model`` its head, patch it (``relbitfit``), both in place, and set ``requires_grad`` to the variant's
    trainable set."""
    apply_head(model, fine_tuning.head)
    if fine_tuning.variant == "relbitfit":
        add_relative_attention_bias(model, fine_tuning.relative_options())
    chosen = trainable_names(model, fine_tuning)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    return model
