"""The registered ``relbitfit`` method: config checks, a training run through the engine, delta export,
the real MiniLM starting point, the peft-count command and the bias-change measure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from fewlabels.commands.peft import add_commands as add_cli
from fewlabels.config import ConfigError, build_config
from fewlabels.methods.relbitfit import RelBitFitConfig, RelBitFitMethod, restore_fine_tuned
from fewlabels.methods.relbitfit.biases import bias_changes_per_layer
from fewlabels.registry import get_method, load_config
from tiny_bert import minilm_dir, save_tiny_bert


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer BERT (hidden 32) saved with the MiniLM WordPiece tokenizer (no head, like a pretrained checkpoint)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def csv_task(tmp_path):
    good = ["a great film", "lovely and warm", "superb acting", "I loved it"]
    bad = ["dull and long", "a waste of time", "boring plot", "awful script"]
    rows = [f"{t},pos" for t in good] + [f"{t},neg" for t in bad]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "dev.csv").write_text("text,label\n" + "\n".join(rows[::-1]) + "\n")
    return tmp_path


def make_config(model_dir, task_dir, out_dir, **model) -> RelBitFitConfig:
    data = {
        "dataset": "csv",
        "train_file": str(task_dir / "train.csv"),
        "eval_file": str(task_dir / "dev.csv"),
        "label_names": ["neg", "pos"],
        "n_train": 8,
        "max_length": 16,
    }
    data["dev_size"] = 0  # 8 examples: select on the eval file
    train = {"steps": 4, "epochs": 0, "batch_size": 4, "checkpoint_every": 4, "log_every": 2, "device": "cpu"}
    return build_config(
        RelBitFitConfig,
        {
            "method": "relbitfit",
            "name": "run",
            "output_dir": str(out_dir),
            "model": {"path": str(model_dir), **model},
            "data": data,
            "train": train,
        },
    )


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.variant.*pt/lr/clip are RelBitFit options"):
        build_config(RelBitFitConfig, {"model": {"variant": "bitfit", "pt": True}})
    with pytest.raises(ConfigError, match="data.root"):
        build_config(RelBitFitConfig, {"data": {"dataset": "glue", "task": "rte"}})
    with pytest.raises(ConfigError, match="data.task.*unknown GLUE task 'rtee'"):
        build_config(RelBitFitConfig, {"data": {"dataset": "glue", "task": "rtee", "root": "/x"}})
    defaults = build_config(RelBitFitConfig, {})
    # issue 16: warm-up + linear decay (poly, power 1) replaced the constant rate; 1e-3 is RelBitFit's own default
    assert (defaults.train.optimizer, defaults.train.lr, defaults.train.scheduler) == (
        "adamw",
        1e-3,
        "poly",
    )
    assert (defaults.train.batch_size, defaults.train.max_grad_norm, defaults.data.max_length) == (
        8,
        1.0,
        128,
    )
    assert get_method("relbitfit") is RelBitFitMethod


def test_sequence_longer_than_the_models_positions_is_a_config_error(tiny_dir, csv_task, tmp_path):
    config = make_config(tiny_dir, csv_task, tmp_path)
    config.data.max_length = 65
    with pytest.raises(ConfigError, match="data.max_length.*65 tokens exceed.*64 positions"):
        RelBitFitMethod(config).build_model()


def test_engine_run_trains_evaluates_and_its_delta_restores_the_model(tiny_dir, csv_task, tmp_path):
    from fewlabels.engine import train

    config = make_config(tiny_dir, csv_task, tmp_path, variant="relbitfit", lr=True, rank=4)
    result = train(config)
    assert 0.0 <= result.metrics["score"] <= 1.0 and result.metrics["score"] == result.metrics["accuracy"]
    method = RelBitFitMethod(config)
    model = method.build_model()
    from fewlabels.engine.checkpoint import load_weights

    # issue 16: the run stores the delta (trainable + freshly initialised tensors), loaded onto the base model
    load_weights(model, result.run_dir / "model.safetensors", method.load_saved_state)
    model.eval()
    assert set(method.extra_tensors) == {"classifier.weight", "classifier.bias"}  # the head is not in tiny_dir
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["export-delta", str(result.run_dir), "--which", "last", "--out", str(tmp_path / "d")])
    assert args.func(args) == 0
    restored = restore_fine_tuned(tmp_path / "d", tiny_dir).eval()
    batch = {k: v[:, :10] for k, v in method.eval_sets()["eval"].arrays.items()}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, restored(**batch).logits)
    # the tables moved away from zero during the 4 steps
    assert model.bert.relative_attention.key_factor.abs().sum() > 0
    (tmp_path / "new.txt").write_text("what a great film\nboring\n")
    (written,) = method.predict(model, [tmp_path / "new.txt"], tmp_path / "pred", torch.device("cpu"))
    records = [json.loads(line) for line in written.read_text().splitlines()]
    assert [r["text"] for r in records] == ["what a great film", "boring"]
    # issue 16: the label is named (data.label_names), its index beside it
    assert all(r["label"] in ("neg", "pos") and abs(sum(r["probabilities"]) - 1) < 1e-5 for r in records)
    assert all(r["label"] == ["neg", "pos"][r["label_index"]] for r in records)
    args = parser.parse_args(["bias-changes", str(result.run_dir), "--out", str(tmp_path / "bias.png")])
    assert args.func(args) == 0 and (tmp_path / "bias.png").stat().st_size > 0
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_dir))
    changes = bias_changes_per_layer(base, model)
    assert len(changes) == 2 and min(changes) > 0  # lr 1e-3 x 4 AdamW steps moved every layer's biases


def test_minilm_patched_at_zero_starts_from_the_pretrained_function(csv_task, tmp_path):
    path = minilm_dir()
    config = make_config(path, csv_task, tmp_path)
    method = RelBitFitMethod(config)
    torch.manual_seed(7)
    patched = method.build_model().eval()
    torch.manual_seed(7)
    base = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2).eval()
    batch = {k: v[:, :12] for k, v in method.eval_sets()["eval"].arrays.items()}
    with torch.no_grad():
        assert torch.equal(patched(**batch).logits, base(**batch).logits)
    # BitFit's 26,882 - 6 key biases of 384 + 6 layers x N=16 x (384 + 12 heads), + the pooler's 384 x 384 dense
    # weight, trainable with the default pooler head since issue 16
    expected = 26_882 - 6 * 384 + 6 * 16 * 396 + 384 * 384
    assert sum(p.numel() for p in patched.parameters() if p.requires_grad) == expected


def test_peft_count_command_prints_the_table(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"model_type": "roberta", "num_hidden_layers": 2}')
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["peft-count", str(tmp_path / "c.json")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    # 2 layers of roberta-base: BitFit = 2 x 8,448 biases + 768 (embedding LN) + head 592,130
    assert "bitfit" in out and f"{2 * 8448 + 768 + 592130:,}" in out


def test_bias_changes_are_the_per_layer_mean_absolute_change_without_the_key_bias():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12)
    before = AutoModelForSequenceClassification.from_config(config)
    after = AutoModelForSequenceClassification.from_config(config)
    after.load_state_dict(before.state_dict())
    with torch.no_grad():
        after.bert.encoder.layer[1].output.dense.bias.add_(2.0)  # 8 of 60 entries (6 x 8 + FFN 12)
        after.bert.encoder.layer[0].attention.self.key.bias.add_(5.0)  # ignored
    assert bias_changes_per_layer(before, after) == pytest.approx([0.0, 2.0 * 8 / 60])


def test_shipped_configs_validate():
    folder = Path(__file__).resolve().parents[3] / "configs" / "relbitfit"
    files = sorted(folder.glob("*.yaml"))
    assert len(files) == 12  # 9 GLUE tasks + Rotten Tomatoes x (relbitfit, bitfit, full)
    configs = {f.stem: load_config(str(f)) for f in files}
    assert {c.model.variant for c in configs.values()} == {"relbitfit", "bitfit", "full"}
    assert configs["rotten_tomatoes"].data.n_train == 2000 and configs["glue_wnli"].data.n_train == 0
