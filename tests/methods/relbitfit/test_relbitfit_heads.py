"""Issue 16: the classification head as a choice, per-variant training defaults, and the dev split."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig

from fewlabels.config import ConfigError, build_config
from fewlabels.data.base import DataError
from fewlabels.methods.relbitfit import RelBitFitConfig
from fewlabels.methods.relbitfit.counts import format_parameter_table, trainable_parameter_count
from fewlabels.methods.relbitfit.data import dev_and_train_indices, few_sample_indices
from fewlabels.methods.relbitfit.delta import restore_fine_tuned, save_delta
from fewlabels.methods.relbitfit.heads import PooledLinearHead, TokenPooler
from fewlabels.methods.relbitfit.variants import FineTuning, apply_fine_tuning

CONFIGS = {"bert": BertConfig, "roberta": RobertaConfig}


def tiny_model(kind: str = "bert", seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[kind](
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=40,
        max_position_embeddings=40,
        num_labels=3,
    )
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_pooler_head_trains_the_bert_pooler_dense_layer_and_cls_mean_replace_it():
    pooler = apply_fine_tuning(tiny_model(), FineTuning("bitfit", head="pooler"))
    assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight"} <= trainable(pooler)
    for head in ("cls", "mean"):
        model = apply_fine_tuning(tiny_model(), FineTuning("bitfit", head=head))
        assert isinstance(model.bert.pooler, TokenPooler)
        assert not any(n.startswith("bert.pooler") for n, _ in model.named_parameters())
        assert {"classifier.weight", "classifier.bias"} <= trainable(model)
        # one linear head on the hidden states: the pooler's 32 x 32 weight and 32 bias are gone
        assert len(trainable(pooler)) - len(trainable(model)) == 2
        assert (
            sum(p.numel() for p in pooler.parameters() if p.requires_grad)
            - sum(p.numel() for p in model.parameters() if p.requires_grad)
            == 32 * 32 + 32
        )


def test_cls_head_reads_the_first_token_and_mean_head_ignores_padding():
    ids = torch.tensor([[5, 6, 7, 8, 9, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    cls = apply_fine_tuning(tiny_model(), FineTuning("bitfit", head="cls")).eval()
    mean = apply_fine_tuning(tiny_model(), FineTuning("bitfit", head="mean")).eval()
    with torch.no_grad():
        hidden = cls.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        expected_cls = cls.classifier(hidden[:, 0])
        assert torch.allclose(cls(input_ids=ids, attention_mask=mask).logits, expected_cls, atol=1e-6)
        expected_mean = mean.classifier(hidden[0, :5].mean(0, keepdim=True))
        padded = mean(input_ids=ids, attention_mask=mask).logits
        trimmed = mean(input_ids=ids[:, :5], attention_mask=mask[:, :5]).logits
    torch.testing.assert_close(padded, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded, trimmed, rtol=1e-5, atol=1e-6)  # padding changes nothing
    assert mean.bert.pooler.mask is None  # the mask of a forward is not kept after it


def test_roberta_heads_pooler_keeps_its_head_cls_mean_use_one_linear_layer():
    pooler = apply_fine_tuning(tiny_model("roberta"), FineTuning("bitfit"))
    assert {"classifier.dense.weight", "classifier.out_proj.weight"} <= trainable(pooler)
    model = apply_fine_tuning(tiny_model("roberta"), FineTuning("relbitfit", head="mean", num_positions=8))
    assert isinstance(model.classifier, PooledLinearHead)
    assert {"classifier.out_proj.weight", "classifier.out_proj.bias"} <= trainable(model)
    assert not any(n.startswith("classifier.dense") for n, _ in model.named_parameters())
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[0, 5, 6, 2]]), attention_mask=torch.ones(1, 4, dtype=torch.long))
    assert out.logits.shape == (1, 3)


@pytest.mark.parametrize(("kind", "head"), [("bert", "cls"), ("bert", "mean"), ("roberta", "mean")])
def test_delta_round_trip_with_every_head(tmp_path, kind, head):
    base = tiny_model(kind)
    base.save_pretrained(tmp_path / "base")
    fine_tuning = FineTuning("bitfit", head=head)
    model = apply_fine_tuning(base, fine_tuning)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    ids = torch.randint(3, 50, (4, 9), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    optimizer.step()
    model.eval()
    path = save_delta(model, tmp_path / "delta.safetensors", fine_tuning)
    torch.manual_seed(99)
    restored = restore_fine_tuned(path, tmp_path / "base", attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, restored(input_ids=ids).logits)


def test_peft_count_counts_the_head_it_is_given():
    roberta = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, num_labels=2)
    assert trainable_parameter_count(roberta, "bitfit") == 694_274  # the pooler (RoBERTa) head: the thesis' count
    # cls: RoBERTa's 768 x 768 dense layer and its bias are replaced by nothing; out_proj stays
    assert trainable_parameter_count(roberta, "bitfit", head="cls") == 694_274 - 768 * 768 - 768
    bert = BertConfig(num_labels=2)  # bert-base: the pooler dense weight is the difference (its bias is a bias)
    pooled = trainable_parameter_count(bert, "bitfit", head="pooler")
    assert pooled - trainable_parameter_count(bert, "bitfit", head="mean") == 768 * 768 + 768
    table = format_parameter_table(BertConfig(num_hidden_layers=2, num_labels=2), head="pooler")
    assert "head pooler (592,130 trainable parameters" in table  # 768 x 768 + 768 + classifier 2 x 768 + 2


def test_each_variant_gets_its_own_learning_rate_and_epochs_and_a_linear_schedule():
    full = build_config(RelBitFitConfig, {"model": {"variant": "full"}})
    bitfit = build_config(RelBitFitConfig, {"model": {"variant": "bitfit"}})
    assert (full.train.lr, full.train.epochs) == (2e-5, 10.0)
    assert (bitfit.train.lr, bitfit.train.epochs) == (1e-3, 16.0)
    assert (bitfit.train.scheduler, bitfit.train.poly_power, bitfit.train.warmup_ratio) == ("poly", 1.0, 0.1)
    given = build_config(RelBitFitConfig, {"model": {"variant": "full"}, "train": {"lr": 3e-5, "epochs": 3}})
    assert (given.train.lr, given.train.epochs) == (3e-5, 3.0)
    steps = build_config(RelBitFitConfig, {"train": {"steps": 60}})
    assert (steps.train.epochs, steps.train.steps) == (0.0, 60)  # steps given: a step budget
    with pytest.raises(ConfigError, match="train.steps"):
        build_config(RelBitFitConfig, {"train": {"epochs": 0}})
    with pytest.raises(ConfigError, match="train.warmup_ratio"):
        build_config(RelBitFitConfig, {"train": {"warmup_ratio": 1.0}})
    with pytest.raises(ConfigError, match="model.query_bias"):
        build_config(RelBitFitConfig, {"model": {"variant": "bitfit", "query_bias": True}})


def test_dev_split_is_seeded_disjoint_shared_across_n_and_the_n_draws_stay_nested():
    dev, small = dev_and_train_indices(1000, 200, 100, seed=3)
    dev_again, large = dev_and_train_indices(1000, 200, 500, seed=3)
    assert dev == dev_again and len(dev) == 200 and dev == sorted(dev)
    assert not set(dev) & set(large) and len(set(large)) == 500
    assert set(small) <= set(large)
    assert dev_and_train_indices(1000, 200, 100, seed=4)[0] != dev
    assert dev_and_train_indices(1000, 0, 100, seed=3) == ([], few_sample_indices(1000, 100, 3))
    assert len(dev_and_train_indices(1000, 200, 0, seed=3)[1]) == 800  # n = 0: the whole rest
    with pytest.raises(DataError, match="dev_size=200 \\+ data.n_train=900"):
        dev_and_train_indices(1000, 200, 900, seed=3)
