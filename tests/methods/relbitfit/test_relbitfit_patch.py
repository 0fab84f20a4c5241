"""The relative-attention patch: exact zero start, the score formula, isolation from unpatched models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig
from transformers.models.bert.modeling_bert import BertSelfAttention

from fewlabels.methods.relbitfit.patch import (
    RelativeBiasOptions,
    add_relative_attention_bias,
    find_self_attentions,
    relative_positions,
)

CONFIGS = {"bert": BertConfig, "roberta": RobertaConfig}


def tiny_model(kind: str = "bert", attn: str = "eager", seed: int = 0, num_labels: int = 3):
    torch.manual_seed(seed)
    config = CONFIGS[kind](
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        num_labels=num_labels,
    )
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn).eval()


def batch(seed: int = 1, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length - 3 :] = 0  # one padded row: the mask and the bias must combine correctly
    return {"input_ids": ids, "attention_mask": mask}


def randomise_tables(model, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".relative_attention." in f".{name}":
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_zero_tables_give_the_base_models_logits_exactly(kind, attn):
    model = tiny_model(kind, attn)
    inputs = batch()
    with torch.no_grad():
        before = model(**inputs).logits.clone()
        add_relative_attention_bias(model, RelativeBiasOptions(num_positions=8))
        after = model(**inputs).logits
    assert torch.equal(before, after)


def test_lr_tables_also_start_at_zero_and_their_zero_factor_gets_a_gradient():
    model = tiny_model()
    inputs = batch()
    with torch.no_grad():
        before = model(**inputs).logits.clone()
    tables = add_relative_attention_bias(model, RelativeBiasOptions(num_positions=8, rank=4))
    out = model(**inputs).logits
    assert torch.equal(before, out.detach())
    out.square().sum().backward()
    assert tables.key_factor.grad.abs().sum() > 0  # E = 0 but U random: not a saddle point
    assert tables.score_table.grad.abs().sum() > 0


def test_unpatched_model_stays_bit_identical_and_classes_are_untouched():
    class_forward = BertSelfAttention.forward
    untouched, patched = tiny_model(seed=0), tiny_model(seed=0)
    inputs = batch()
    with torch.no_grad():
        reference = untouched(**inputs).logits.clone()
        add_relative_attention_bias(patched, RelativeBiasOptions(num_positions=8))
        randomise_tables(patched)
        changed = patched(**inputs).logits
        again = untouched(**inputs).logits
    assert BertSelfAttention.forward is class_forward
    assert all("forward" not in vars(m) for m in find_self_attentions(untouched))
    assert torch.equal(reference, again)
    assert not torch.allclose(reference, changed)


def test_relative_positions_clip_absolute_and_signed_distances():
    index, lo, hi = relative_positions(4, 4, RelativeBiasOptions(num_positions=3))
    assert (lo, hi) == (0, 3)
    assert index.tolist() == [[0, 1, 2, 2], [1, 0, 1, 2], [2, 1, 0, 1], [2, 2, 1, 0]]
    index, lo, hi = relative_positions(3, 3, RelativeBiasOptions(num_positions=2, relative_index="signed"))
    # entries: j - i clamped to [-1, 1], + N - 1 = 1 -> rows 0..2, all used
    assert (lo, hi) == (0, 3)
    assert (index + lo).tolist() == [[1, 2, 2], [0, 1, 2], [0, 0, 1]]
    # a short sequence only uses the first rows of a long absolute table
    index, lo, hi = relative_positions(5, 5, RelativeBiasOptions(num_positions=128))
    assert (lo, hi) == (0, 5) and int(index.max()) == 4


@pytest.mark.parametrize("relative_index", ["absolute", "signed"])
@pytest.mark.parametrize("tie", [False, True])
def test_attention_probabilities_follow_the_relative_score_formula(relative_index, tie):
    model = tiny_model("bert", "eager")
    options = RelativeBiasOptions(num_positions=4, relative_index=relative_index, tie_layers=tie)
    tables = add_relative_attention_bias(model, options)
    randomise_tables(model)
    inputs = batch(length=7)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
        hidden = model.bert.embeddings(input_ids=ids)
        attn = model.bert.encoder.layer[0].attention.self
        heads, d = attn.num_attention_heads, attn.attention_head_size
        q = attn.query(hidden).view(3, 7, heads, d).transpose(1, 2)
        k = attn.key(hidden).view(3, 7, heads, d).transpose(1, 2)
        n = options.num_positions
        i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
        r = (i - j).abs().clamp_max(n - 1) if relative_index == "absolute" else (j - i).clamp(1 - n, n - 1) + n - 1
        key_table = tables.key_table[0].view(-1, heads, d)  # layer 0 (or the shared table)
        expected = torch.empty(3, heads, 7, 7)
        for h in range(heads):
            rel = key_table[r, h]  # [7, 7, d]
            score = q[:, h] @ k[:, h].transpose(1, 2) + torch.einsum("bid,ijd->bij", q[:, h], rel)
            expected[:, h] = (score + tables.score_table[0][r, h]) / d**0.5
        expected = expected.masked_fill(mask[:, None, None, :] == 0, float("-inf")).softmax(-1)
    torch.testing.assert_close(out.attentions[0], expected, rtol=1e-5, atol=1e-6)


def test_key_bias_leaves_attention_probabilities_unchanged():
    model = tiny_model("roberta", "eager")
    inputs = batch()
    with torch.no_grad():
        before = model(**inputs, output_attentions=True)
        for attn in find_self_attentions(model):
            attn.key.bias.add_(torch.randn_like(attn.key.bias) * 3.0)
        after = model(**inputs, output_attentions=True)
    for a, b in zip(before.attentions, after.attentions):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(before.logits, after.logits, rtol=1e-5, atol=1e-6)


def test_sdpa_and_eager_agree_with_trained_tables():
    outputs = []
    for attn in ("eager", "sdpa"):
        model = tiny_model("roberta", attn)
        add_relative_attention_bias(model, RelativeBiasOptions(num_positions=5, rank=3))
        randomise_tables(model)
        with torch.no_grad():
            outputs.append(model(**batch()).logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    assert outputs[0].abs().sum() > 0


def test_patching_twice_or_a_model_without_bert_attention_is_refused():
    model = tiny_model()
    add_relative_attention_bias(model, RelativeBiasOptions(num_positions=4))
    with pytest.raises(ValueError, match="already has relative attention tables"):
        add_relative_attention_bias(model, RelativeBiasOptions(num_positions=4))
    with pytest.raises(ValueError, match="no BERT/RoBERTa self-attention"):
        add_relative_attention_bias(torch.nn.Linear(2, 2), RelativeBiasOptions())


def _hand_attention(model, options, tables, ids, layer: int = 0) -> torch.Tensor:
    """Attention probabilities of ``layer`` computed entry by entry from the thesis' score (no library formula):
    score(i, j) = (z_i W_q W_k^T z_j^T + b_q W_k^T z_j^T + z_i W_q R_r + s_r) / sqrt(d), softmax over j."""
    import math

    attn = model.bert.encoder.layer[layer].attention.self
    heads, d = attn.num_attention_heads, attn.attention_head_size
    z = model.bert.embeddings(input_ids=ids)[0]  # layer 0 input: [L, D]
    length = z.shape[0]
    w_q, b_q, w_k = attn.query.weight.t(), attn.query.bias, attn.key.weight.t()
    n = options.num_positions
    probs = torch.empty(heads, length, length)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        for i in range(length):
            scores = []
            for j in range(length):
                if options.relative_index == "absolute":
                    r = min(abs(i - j), n - 1)
                else:
                    r = max(-(n - 1), min(n - 1, j - i)) + n - 1
                zq = z[i] @ w_q[:, cols]  # z_i W_q, without b_q
                kz = z[j] @ w_k[:, cols]  # W_k^T z_j^T
                table = 0 if options.tie_layers else layer
                rel = tables.key_table[table, r, cols]
                value = float(zq @ kz + b_q[cols] @ kz + zq @ rel + tables.score_table[table, r, h])
                scores.append(value / math.sqrt(d))
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            for j in range(length):
                probs[h, i, j] = exps[j] / sum(exps)
    return probs


def _random_biases(model, seed: int = 11) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for attention in find_self_attentions(model):  # non-zero b_q and b_k: the two forms differ only then
            attention.query.bias.copy_(torch.randn(attention.query.bias.shape, generator=g))
            attention.key.bias.copy_(torch.randn(attention.key.bias.shape, generator=g))


@pytest.mark.parametrize("relative_index", ["absolute", "signed"])
@pytest.mark.parametrize("tie", [False, True])
def test_attention_matches_a_hand_computation_of_the_thesis_score(relative_index, tie):
    model = tiny_model("bert", "eager")
    options = RelativeBiasOptions(num_positions=3, relative_index=relative_index, tie_layers=tie)
    tables = add_relative_attention_bias(model, options)
    randomise_tables(model)
    _random_biases(model)
    ids = torch.tensor([[5, 17, 23, 8, 41, 2]])
    with torch.no_grad():
        got = model(input_ids=ids, output_attentions=True).attentions[0][0]
        expected = _hand_attention(model, options, tables, ids)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("query_bias", [False, True])
def test_sdpa_and_eager_agree_with_trained_tables_and_query_biases(query_bias):
    outputs = []
    for attn in ("eager", "sdpa"):
        model = tiny_model("bert", attn)
        add_relative_attention_bias(model, RelativeBiasOptions(num_positions=4, query_bias=query_bias))
        randomise_tables(model)
        _random_biases(model)
        with torch.no_grad():
            outputs.append(model(**batch()).logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_query_bias_option_adds_exactly_the_b_q_R_term():
    options = {
        "thesis": RelativeBiasOptions(num_positions=3),
        "biased": RelativeBiasOptions(num_positions=3, query_bias=True),
    }
    probs = {}
    for name, opt in options.items():
        model = tiny_model("bert", "eager")
        tables = add_relative_attention_bias(model, opt)
        randomise_tables(model)
        attention = model.bert.encoder.layer[0].attention.self
        with torch.no_grad():
            attention.query.bias.copy_(torch.linspace(-2.0, 2.0, attention.query.bias.numel()))
            ids = torch.tensor([[5, 17, 23, 8]])
            probs[name] = model(input_ids=ids, output_attentions=True).attentions[0][0]
    assert not torch.allclose(probs["thesis"], probs["biased"])
    # the biased form's scores = the thesis' + b_q . R_r / sqrt(d): reweighting the thesis' probabilities by
    # exp(b_q . R_r / sqrt(d)) and renormalising gives the biased ones
    heads, d = 4, 8
    b_q = attention.query.bias.view(heads, d)
    r = (torch.arange(4)[:, None] - torch.arange(4)[None, :]).abs().clamp_max(2)
    extra = torch.einsum("hd,ijhd->hij", b_q, tables.key_table[0][r].view(4, 4, heads, d)) / d**0.5
    reweighted = probs["thesis"] * extra.exp()
    torch.testing.assert_close(reweighted / reweighted.sum(-1, keepdim=True), probs["biased"], rtol=1e-4, atol=1e-5)
