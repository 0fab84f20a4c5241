"""Relative-position attention terms for Hugging Face BERT and RoBERTa self-attention (the RelBitFit patch).

For head ``h`` with input ``z_i``, query ``q_i = z_i W_q + b_q`` and key ``k_j`` the patched score is the
thesis' form

    score(i, j) = (q_i . k_j + z_i W_q . R_{r(i,j)}[h] + s_{r(i,j), h}) / sqrt(d_head)

(the relative key term reads the query *without* its bias: with ``b_q`` inside it, ``b_q . R_r`` would add a
layer-specific distance bias even when PT ties ``R`` across layers). ``RelativeBiasOptions.query_bias`` selects
the other form, ``q_i . R_{r(i,j)}``, for comparison. ``q_i . k_j`` equals the thesis'
``z_i W_q W_k^T z_j^T + b_q W_k^T z_j^T`` up to terms constant in ``j``, which the row softmax cancels.

where ``R`` (``N x d_model``, one ``d_head`` slice per head) and ``s`` (``N x n_heads``) are per-layer tables
and ``r(i, j)`` indexes the relative position: ``min(|i - j|, N - 1)`` (``absolute``, N entries) or
``clamp(j - i, -(N-1), N-1) + N - 1`` (``signed``, 2N - 1 entries). Options: one table shared by all layers
(PT), ``R = E U`` with ``E`` (entries x rank) and ``U`` (rank x d_model) shared by all layers (LR), and
``N = L_max`` (Clip, distances >= L_max share the last entry).

The terms are added to the additive attention mask that the model passes to its attention function, so both
the ``eager`` and the ``sdpa`` implementations work unchanged (other implementations cannot take a dense bias
and are rejected). Only the self-attention *instances* of the patched model get a new ``forward``; the
classes, and so every model that was not patched, are untouched. Tables start at zero, so a freshly patched
model computes the pretrained model's function; in LR only ``E`` is zero (``U`` is random) because ``E = U = 0`` would
be a saddle point where neither factor ever receives a gradient.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward
from transformers.models.roberta.modeling_roberta import RobertaSelfAttention

__all__ = [
    "RelativeAttentionBias",
    "RelativeBiasOptions",
    "add_relative_attention_bias",
    "find_self_attentions",
    "relative_attention_bias",
    "relative_positions",
]

SUPPORTED_SELF_ATTENTIONS: tuple[type[nn.Module], ...] = (BertSelfAttention, RobertaSelfAttention)
#: attention implementations that accept a dense additive float bias through the attention mask
_DENSE_BIAS_IMPLEMENTATIONS = ("eager", "sdpa")
#: name of the tables module attached to the base model (parameter names start with ``<prefix>.relative_attention``)
TABLES_NAME = "relative_attention"


@dataclass(frozen=True)
class RelativeBiasOptions:
    """Shape of the relative tables.

    Attributes:
        num_positions: N, the number of distances with their own entry (``max_length``, or ``L_max`` for
        Clip).
        relative_index: ``absolute`` (N entries, ``min(|i-j|, N-1)``) or ``signed`` (2N - 1 entries).
        tie_layers: PT, one ``R`` and one ``s`` shared by all layers.
        rank: LR when > 0: ``R = E U`` with inner size ``rank``, shared across layers (``s`` stays per layer).
        query_bias: the relative key term reads ``q_i = z_i W_q + b_q`` instead of the thesis' ``z_i W_q``.
    """

    num_positions: int = 128
    relative_index: Literal["absolute", "signed"] = "absolute"
    tie_layers: bool = False
    rank: int = 0
    query_bias: bool = False

    def __post_init__(self) -> None:
        if self.num_positions < 1:
            raise ValueError(f"num_positions must be >= 1, got {self.num_positions}")
        if self.relative_index not in ("absolute", "signed"):
            raise ValueError(f"relative_index must be 'absolute' or 'signed', got {self.relative_index!r}")
        if self.rank < 0:
            raise ValueError(f"rank must be >= 0 (0 = full-rank tables), got {self.rank}")

    @property
    def num_entries(self) -> int:
        """Rows of every table: N (absolute) or 2N - 1 (signed)."""
        return self.num_positions if self.relative_index == "absolute" else 2 * self.num_positions - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def relative_positions(
    q_len: int,
    k_len: int,
    options: RelativeBiasOptions,
    device: torch.device | None = None,
    used_rows_only: bool = True,
) -> tuple[torch.Tensor, int, int]:
    """Table row used by every (query i, key j) pair.

    Returns:
        ``(index, lo, hi)``: ``index`` [q_len, k_len] int64 holds ``r(i, j) - lo``, and rows ``lo .. hi - 1``
        of the table are the only ones used, so callers slice the table to them (for N = 128 and a 40-token
        batch this skips two thirds of the ``q . R`` products). With ``used_rows_only=False``: ``lo, hi = 0,
        options.num_entries`` (the whole table) and bounds that do not depend on the lengths, which may then be
        traced or symbolic values (export).
    """
    n = options.num_positions
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    if options.relative_index == "absolute":
        index = (i - j).abs().clamp_max(n - 1)
    else:
        index = (j - i).clamp(-(n - 1), n - 1) + (n - 1)
    if not used_rows_only:
        return index, 0, options.num_entries
    if options.relative_index == "absolute":
        lo, hi = 0, min(n, max(q_len, k_len))
    else:
        lo, hi = (n - 1) - min(n - 1, q_len - 1), (n - 1) + min(n - 1, k_len - 1) + 1
    return index - lo, lo, hi


class RelativeAttentionBias(nn.Module):
    """The trainable relative tables of a whole model.

    Parameters (T = 1 with PT, else the number of layers; E = ``options.num_entries``; D = d_model; H = heads):
        ``key_table`` [T, E, D] (full rank) or ``key_factor`` [E, rank] and ``key_basis`` [rank, D] (LR);
        ``score_table`` [T, E, H].
    """

    def __init__(self, options: RelativeBiasOptions, num_layers: int, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of {num_heads} heads")
        self.options = options
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        tables = 1 if options.tie_layers else num_layers
        entries = options.num_entries
        if options.rank > 0:
            self.key_factor = nn.Parameter(torch.zeros(entries, options.rank))
            # U random, E zero (as LoRA): R = E U = 0 at the start and E's gradient R_grad U^T is not zero.
            basis = torch.empty(options.rank, hidden_size)
            nn.init.normal_(basis, std=options.rank**-0.5)
            self.key_basis = nn.Parameter(basis)
        else:
            self.key_table = nn.Parameter(torch.zeros(tables, entries, hidden_size))
        self.score_table = nn.Parameter(torch.zeros(tables, entries, num_heads))
        self._index_cache: dict[tuple[int, int, str], tuple[torch.Tensor, int, int]] = {}

    def extra_repr(self) -> str:
        return f"layers={self.num_layers}, hidden={self.hidden_size}, heads={self.num_heads}, {self.options}"

    def _table_index(self, layer: int) -> int:
        return 0 if self.options.tie_layers else layer

    def key_rows(self, layer: int, lo: int, hi: int) -> torch.Tensor:
        """Rows ``lo .. hi - 1`` of layer ``layer``'s ``R``: [hi - lo, D]."""
        if self.options.rank > 0:
            return self.key_factor[lo:hi] @ self.key_basis
        return self.key_table[self._table_index(layer), lo:hi]

    def score_rows(self, layer: int, lo: int, hi: int) -> torch.Tensor:
        """Rows ``lo .. hi - 1`` of layer ``layer``'s ``s``: [hi - lo, H]."""
        return self.score_table[self._table_index(layer), lo:hi]

    def forward(
        self,
        query: torch.Tensor,
        layer: int,
        k_len: int,
        scaling: float,
        query_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Additive score bias ``((q_i - b_q) . R_{r(i,j)}[h] + s_{r(i,j),h}) * scaling``.

        Args:
            query: [B, H, Lq, d_head] projected queries (bias included, not yet scaled).
            layer: index of the layer whose tables are used.
            k_len: number of keys Lk.
            scaling: ``1 / sqrt(d_head)``.
            query_bias: [H * d_head] the layer's ``b_q``, removed from the relative key term (the thesis' form);
                None when ``options.query_bias`` keeps it, or when the query has no bias.

        Returns:
            [B, H, Lq, Lk] in ``query``'s dtype.
        """
        b, h, q_len, d_head = query.shape
        index, lo, hi = self._index(q_len, k_len, query.device)
        # Scale the small tables, not the [B, H, Lq, Lk] result, and add s per distance *before* picking r(i, j):
        # one matmul, one add on [B, H, Lq, n] and one gather, instead of two gathers and three full-size ops.
        key_rows = self.key_rows(layer, lo, hi) * scaling  # [n, D]
        score_rows = self.score_rows(layer, lo, hi) * scaling  # [n, H]
        if query_bias is not None:
            # (q_i - b_q) . R_r = q_i . R_r - b_q . R_r: the second term is one [n, H] table, so the thesis' form
            # costs no [B, H, Lq, *] operation more than the biased one.
            score_rows = score_rows - (key_rows.view(hi - lo, h, d_head) * query_bias.view(1, h, d_head)).sum(-1)
        rows = key_rows.to(query.dtype).view(hi - lo, h, d_head)
        scores = score_rows.to(query.dtype).t()[None, :, None, :]  # [1, H, 1, n]
        # [B, H, Lq, d] @ [H, d, n] -> [B, H, Lq, n]: every query against every used distance.
        per_distance = torch.matmul(query, rows.permute(1, 2, 0)) + scores
        return per_distance.gather(-1, index.expand(b, h, q_len, k_len))

    def _index(self, q_len: int, k_len: int, device: torch.device) -> tuple[torch.Tensor, int, int]:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            # torch.jit.trace / torch.export (``fewlabels export``; torch.compile too): the lengths are traced or
            # symbolic values. No cache (its keys would be those values, and a cached index would enter the graph
            # as a constant) and every row of the table (slice bounds computed from the lengths would be fixed at
            # the example's length): one graph for every sequence length, with the same scores.
            return relative_positions(q_len, k_len, self.options, device, used_rows_only=False)
        # The index depends only on the lengths: build it once per (lengths, device), not once per layer and step.
        key = (q_len, k_len, str(device))
        cached = self._index_cache.get(key)
        if cached is None:
            if len(self._index_cache) >= 256:  # batches trimmed to their longest example: bounded anyway
                self._index_cache.clear()
            cached = self._index_cache[key] = relative_positions(q_len, k_len, self.options, device)
        return cached


def find_self_attentions(model: nn.Module) -> list[nn.Module]:
    """BERT/RoBERTa self-attention modules of ``model`` in layer order (cross-attention is not included)."""
    return [m for m in model.modules() if isinstance(m, SUPPORTED_SELF_ATTENTIONS)]


def relative_attention_bias(model: nn.Module) -> RelativeAttentionBias | None:
    """The tables module of a patched model, or None for a model that was not patched."""
    for module in model.modules():
        if isinstance(module, RelativeAttentionBias):
            return module
    return None


def _merge_mask(mask: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
    """Additive float mask = attention mask + relative bias.

    ``mask`` is None (no padding), a boolean keep-mask (sdpa) or an additive float mask (eager), [B, 1, Lq,
    Lk].
    """
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, torch.finfo(bias.dtype).min)
    return mask.to(bias.dtype) + bias


def _relative_self_attention_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward of a patched BERT/RoBERTa self-attention: the library's computation plus the relative bias.

    hidden_states [B, L, D] -> (attention output [B, L, D], attention weights [B, H, L, L] or None).
    """
    if cache is not None or kwargs.pop("past_key_values", None) is not None:
        raise ValueError("RelBitFit patches encoder self-attention; key/value caches (decoding) are not supported")
    implementation = self.config._attn_implementation
    if implementation not in _DENSE_BIAS_IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation {implementation!r} cannot take a dense relative bias; "
            "load the model with attn_implementation='eager' or 'sdpa'"
        )
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.attention_head_size)
    query = self.query(hidden_states).view(*hidden_shape).transpose(1, 2)
    key = self.key(hidden_states).view(*hidden_shape).transpose(1, 2)
    value = self.value(hidden_states).view(*hidden_shape).transpose(1, 2)

    tables: RelativeAttentionBias = self._relative_tables
    query_bias = None if tables.options.query_bias else self.query.bias
    bias = tables(query, self._relative_layer, key.shape[2], self.scaling, query_bias)
    attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    output, weights = attention(
        self,
        query,
        key,
        value,
        _merge_mask(attention_mask, bias),
        dropout=0.0 if not self.training else self.dropout.p,
        scaling=self.scaling,
        **kwargs,
    )
    return output.reshape(*input_shape, -1).contiguous(), weights


def add_relative_attention_bias(model: nn.Module, options: RelativeBiasOptions) -> RelativeAttentionBias:
    """Patch every BERT/RoBERTa self-attention of ``model`` in place and return the (zero) tables.

    The tables are registered once, as ``<base model>.relative_attention``, so ``state_dict``/DDP/``.to`` see
    each parameter exactly once even when PT shares it between layers. Each attention instance keeps an
    unregistered reference to them and its layer index.

    Raises:
        ValueError: the model has no supported self-attention, or is already patched.
    """
    attentions = find_self_attentions(model)
    if not attentions:
        raise ValueError(
            f"{type(model).__name__} has no BERT/RoBERTa self-attention module to patch "
            f"(supported: {', '.join(c.__name__ for c in SUPPORTED_SELF_ATTENTIONS)})"
        )
    if relative_attention_bias(model) is not None:
        raise ValueError("the model already has relative attention tables")
    first: Any = attentions[0]
    ref = next(first.parameters())
    tables = RelativeAttentionBias(options, len(attentions), first.all_head_size, first.num_attention_heads)
    tables.to(device=ref.device, dtype=ref.dtype)
    base = getattr(model, "base_model", model)
    base.add_module(TABLES_NAME, tables)
    attention: Any
    for layer, attention in enumerate(attentions):
        # object.__setattr__ keeps the shared tables out of this module's children (no duplicate state_dict keys).
        object.__setattr__(attention, "_relative_tables", tables)
        attention._relative_layer = layer
        attention.forward = types.MethodType(_relative_self_attention_forward, attention)
    return tables
