"""Variants: which tensors train, parameter counts (thesis table), delta save/restore, few-sample draw."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig

from fewlabels.data.base import DataError
from fewlabels.methods.relbitfit.counts import TABLE_VARIANTS, load_model_config, trainable_parameter_count
from fewlabels.methods.relbitfit.data import few_sample_indices
from fewlabels.methods.relbitfit.delta import load_delta, read_delta_metadata, restore_fine_tuned, save_delta
from fewlabels.methods.relbitfit.variants import FineTuning, apply_fine_tuning

CONFIGS = {"bert": BertConfig, "roberta": RobertaConfig}


def tiny_config(kind: str = "bert", num_labels: int = 2):
    return CONFIGS[kind](
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=40,
        max_position_embeddings=40,
        num_labels=num_labels,
    )


def tiny_model(kind: str = "bert", seed: int = 0, num_labels: int = 2):
    torch.manual_seed(seed)
    config = tiny_config(kind, num_labels)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")


def inputs(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (4, 10), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0])}


def expected_trainable(model, variant: str) -> set[str]:
    names = {n for n, _ in model.named_parameters()}
    if variant == "full":
        return names
    # the default pooler head: the classifier and (BERT) the pooler dense layer (issue 16)
    head = {n for n in names if n.startswith(("classifier.", "bert.pooler.dense."))}
    biases = {n for n in names if n.endswith(".bias")}
    if variant == "bitfit":
        return biases | head
    key_biases = {n for n in names if n.endswith("attention.self.key.bias")}
    tables = {n for n in names if ".relative_attention." in n}
    return (biases - key_biases) | head | tables


ROBERTA_BASE_COUNTS = {
    "full": 124_647_170,
    "bitfit": 694_274,
    "relbitfit": 1_883_138,
    "relbitfit+pt": 784_898,
    "relbitfit+lr": 760_834,
    "relbitfit+clip": 984_578,
    "relbitfit+pt+lr+clip": 736_642,
}


def test_trainable_counts_reproduce_the_thesis_table_for_roberta_base():
    config = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, num_labels=2)
    counts = {v: trainable_parameter_count(config, v) for v in TABLE_VARIANTS}
    assert counts == ROBERTA_BASE_COUNTS


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_count_equals_the_trainable_parameters_of_a_patched_model(kind):
    for variant in TABLE_VARIANTS:
        options = {"num_positions": 12, "rank": 4, "l_max": 5}
        model = apply_fine_tuning(tiny_model(kind), FineTuning.parse(variant, **options))
        actual = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable_parameter_count(tiny_config(kind), variant, **options) == actual, variant


@pytest.mark.parametrize("variant", TABLE_VARIANTS)
def test_one_step_changes_only_the_variants_tensors(variant):
    model = apply_fine_tuning(tiny_model(), FineTuning.parse(variant, num_positions=12, rank=4, l_max=5))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected_trainable(model, variant.split("+")[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.train()
    model(**inputs()).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name not in trainable:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
        elif not name.endswith(("key.bias", "key_basis")):
            # b_k gets a ~0 gradient (it cancels) and U of LR a zero one while E = 0: both may stay put.
            assert not torch.equal(param, before[name]), f"trainable {name} did not change"


def test_relbitfit_trains_the_roberta_head_and_not_the_key_bias():
    model = apply_fine_tuning(tiny_model("roberta"), FineTuning("relbitfit", num_positions=8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {
        "classifier.dense.weight",
        "classifier.out_proj.weight",
        "roberta.embeddings.LayerNorm.bias",
    } <= trainable
    assert not any(n.endswith("key.bias") for n in trainable)
    assert {"roberta.relative_attention.key_table", "roberta.relative_attention.score_table"} <= trainable
    assert "roberta.embeddings.LayerNorm.weight" not in trainable


def _train_a_little(model, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for step in range(steps):
        model(**inputs(seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("variant", ["bitfit", "relbitfit+pt+lr"])
def test_delta_round_trip_restores_identical_logits_including_the_head(tmp_path, variant):
    base = tiny_model("bert", seed=0, num_labels=3)
    base.save_pretrained(tmp_path / "base")
    fine_tuning = FineTuning.parse(variant, num_positions=12, rank=4)
    model = apply_fine_tuning(base, fine_tuning)
    _train_a_little(model)
    path = save_delta(model, tmp_path / "delta.safetensors", fine_tuning, metadata={"task": "unit"})
    meta = read_delta_metadata(path)
    assert meta["fine_tuning"]["variant"] == fine_tuning.variant and meta["num_labels"] == 3
    torch.manual_seed(123)  # the fresh head is initialised differently: the delta must overwrite it
    restored = restore_fine_tuned(path, tmp_path / "base", attn_implementation="eager").eval()
    x = {k: v for k, v in inputs(seed=9).items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**x).logits, restored(**x).logits)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert path.stat().st_size < 4 * trainable + 20_000  # only the trainable tensors (fp32) + header


def test_delta_missing_a_trainable_tensor_is_refused(tmp_path):
    model = apply_fine_tuning(tiny_model(), FineTuning("bitfit"))
    model.classifier.weight.requires_grad_(False)  # simulate a save that forgot the head (peft #310)
    path = save_delta(model, tmp_path / "d.safetensors", FineTuning("bitfit"))
    with pytest.raises(ValueError, match="missing trainable tensors.*classifier.weight"):
        load_delta(tiny_model(), path)


def test_few_sample_draw_is_reproducible_per_seed_and_nested():
    a, b = few_sample_indices(1000, 100, seed=3), few_sample_indices(1000, 100, seed=3)
    assert a == b and len(set(a)) == 100 and a == sorted(a)
    assert few_sample_indices(1000, 100, seed=4) != a
    assert set(a) <= set(few_sample_indices(1000, 500, seed=3))
    assert few_sample_indices(7, 0, seed=1) == list(range(7))
    with pytest.raises(DataError, match="n_train=8 is larger than the training set"):
        few_sample_indices(7, 8, seed=1)


def test_variant_names_and_options_are_validated():
    assert FineTuning.parse("relbitfit+clip+pt").label == "relbitfit+pt+clip"
    assert FineTuning.parse("relbitfit+clip", l_max=7).relative_options().num_positions == 7
    with pytest.raises(ValueError, match="unknown variant"):
        FineTuning.parse("relbitfit+xx")
    with pytest.raises(ValueError, match="options of 'relbitfit'"):
        FineTuning.parse("bitfit+pt")


def test_model_config_loads_from_a_directory_or_a_json_file(tmp_path):
    tiny_config("roberta").save_pretrained(tmp_path)
    from_dir = load_model_config(tmp_path, num_labels=5)
    (tmp_path / "c.json").write_text('{"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4}')
    from_file = load_model_config(tmp_path / "c.json")
    assert (from_dir.model_type, from_dir.num_labels, from_file.hidden_size) == ("roberta", 5, 64)
    (tmp_path / "bad.json").write_text('{"hidden_size": 64}')
    with pytest.raises(ValueError, match="needs 'model_type'"):
        load_model_config(tmp_path / "bad.json")
