"""Issue 16, using the result: runs store the delta (not model copies), resume from it, predict with named labels
from CSV/JSONL files, from a run or from a delta + its base model, and BitFit merges into a plain HF directory."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification

from cli_cases import digests, error_lines, run_cli
from fewlabels.commands.peft import add_commands as add_cli
from fewlabels.config import ConfigError, build_config
from fewlabels.engine import load_run, train
from fewlabels.methods.relbitfit import RelBitFitConfig
from tiny_bert import save_tiny_bert


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer BERT (hidden 32) saved with the MiniLM WordPiece tokenizer (its pooler is in the checkpoint)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("task")
    good = ["a great film", "lovely and warm", "superb acting", "I loved it", "a joy", "moving and wise"]
    bad = ["dull and long", "a waste of time", "boring plot", "awful script", "tedious", "flat and lifeless"]
    rows = [f"{t},pos" for t in good] + [f"{t},neg" for t in bad]
    (out / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (out / "test.csv").write_text("text,label\n" + "\n".join(rows[::-1]) + "\n")
    return out


def config(model_dir, task_dir, out_dir, name: str, steps: int = 4, **model) -> RelBitFitConfig:
    return build_config(
        RelBitFitConfig,
        {
            "method": "relbitfit",
            "name": name,
            "output_dir": str(out_dir),
            "model": {"path": str(model_dir), **model},
            "data": {
                "dataset": "csv",
                "train_file": str(task_dir / "train.csv"),
                "eval_file": str(task_dir / "test.csv"),
                "label_names": ["neg", "pos"],
                "n_train": 8,
                "dev_size": 4,
                "max_length": 16,
            },
            "train": {
                "steps": steps,
                "epochs": 0,
                "batch_size": 4,
                "lr": 1e-2,
                "eval_every": 2,
                "checkpoint_every": 2,
                "log_every": 2,
                "device": "cpu",
            },
        },
    )


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_run_selects_on_dev_reports_test_and_stores_only_the_delta(tiny_dir, task_dir, tmp_path):
    result = train(config(tiny_dir, task_dir, tmp_path, "bitfit", variant="bitfit"))
    best = json.loads((result.run_dir / "best.json").read_text())
    assert {"score", "accuracy", "accuracy_test"} <= set(best)  # selected on dev, test reported beside it
    run = load_run(result.run_dir)
    assert set(run.method.eval_sets()) == {"dev", "test"}
    dev = [run.method.task.train[i].text for i in run.method.split_indices()[0]]
    trained = [run.method.task.train[i].text for i in run.method.split_indices()[1]]
    assert len(dev) == 4 and len(trained) == 8 and not set(dev) & set(trained)
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    for weights in ("model.safetensors", "best.safetensors"):
        with safe_open(str(result.run_dir / weights), framework="pt") as fh:
            assert set(fh.keys()) == trainable  # biases + pooler dense + classifier, nothing of the base
    state = torch.load(sorted((result.run_dir / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)
    assert set(state["model"]) == trainable
    run.config.data.eval_test = False
    assert "accuracy_test" not in run.evaluate()


def test_resume_from_a_delta_checkpoint_continues_exactly(tiny_dir, task_dir, tmp_path):
    def make(name: str, steps: int) -> RelBitFitConfig:
        cfg = config(tiny_dir, task_dir, tmp_path, name, steps=steps, variant="relbitfit", lr=True, rank=4)
        # a schedule that does not depend on the total, so 2 + 2 steps can equal 4
        cfg.train.scheduler, cfg.train.warmup_ratio, cfg.train.warmup_steps = "constant", 0.0, 0
        return cfg

    whole = train(make("whole", 4))
    train(make("split", 2))
    resumed = train(make("split", 4), resume_dir=tmp_path / "split")
    with safe_open(str(whole.run_dir / "model.safetensors"), framework="pt") as a:
        with safe_open(str(resumed.run_dir / "model.safetensors"), framework="pt") as b:
            assert set(a.keys()) == set(b.keys())
            for key in a.keys():
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


def test_predict_names_labels_and_reads_headers_from_a_run_and_from_a_delta(tiny_dir, task_dir, tmp_path):
    result = train(config(tiny_dir, task_dir, tmp_path, "rel", variant="relbitfit"))
    (tmp_path / "new.csv").write_text('label,text\npos,"great, really great"\nneg,dull\n')
    (tmp_path / "new.jsonl").write_text('{"text": "great"}\n{"text": "dull", "label": "neg"}\n')
    run = load_run(result.run_dir)
    written = run.predict([tmp_path / "new.csv", tmp_path / "new.jsonl"], tmp_path / "pred")
    records = [json.loads(line) for line in written[0].read_text().splitlines()]
    assert [r["text"] for r in records] == ["great, really great", "dull"]  # no header row, no label column
    assert all(r["label"] in ("neg", "pos") for r in records)
    assert [json.loads(line)["text"] for line in written[1].read_text().splitlines()] == ["great", "dull"]
    assert cli("export-delta", str(result.run_dir), "--out", str(tmp_path / "d.safetensors")) == 0
    assert (
        cli(
            "predict-delta",
            str(tmp_path / "d.safetensors"),
            str(tmp_path / "new.csv"),
            "--base",
            str(tiny_dir),
            "--out",
            str(tmp_path / "pred_delta"),
        )
        == 0
    )
    lines = (tmp_path / "pred_delta" / "new.predictions.jsonl").read_text().splitlines()
    from_delta = [json.loads(line) for line in lines]
    assert [r["label"] for r in from_delta] == [r["label"] for r in records]
    for a, b in zip(from_delta, records):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_predict_never_overwrites_an_input_file_whatever_the_paths(tiny_dir, task_dir, tmp_path):
    """An output that is an input -- by its name, a relative path, a hard link or a symlink -- is refused with one
    ``error:`` line before anything is written, by ``predict`` and by ``predict-delta``; inputs that share a file
    name get one predictions file each."""
    result = train(config(tiny_dir, task_dir, tmp_path / "runs", "rel", steps=2, variant="relbitfit"))
    assert cli("export-delta", str(result.run_dir), "--out", str(tmp_path / "d.safetensors")) == 0
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("a great film\ndull\n")
    (texts / "a.predictions.jsonl").write_text('{"text": "superb acting"}\n')
    (texts / "new.csv").write_text("text\nlovely and warm\n")
    for name in ("hard", "soft"):
        (tmp_path / name).mkdir()
    os.link(texts / "new.csv", tmp_path / "hard/new.predictions.jsonl")
    (tmp_path / "soft/new.predictions.jsonl").symlink_to(texts / "new.csv")
    run, delta = str(result.run_dir), str(tmp_path / "d.safetensors")
    refused = [
        ["predict", run, "a.txt", "a.predictions.jsonl", "--out", "../texts"],  # a.txt -> a.predictions.jsonl
        ["predict", run, "new.csv", "--out", "../hard"],
        ["predict", run, "new.csv", "--out", "../soft"],
        ["predict-delta", delta, "new.csv", "--base", str(tiny_dir), "--out", "../hard"],
        ["predict-delta", delta, "a.txt", "a.predictions.jsonl", "--base", str(tiny_dir), "--out", "."],
    ]
    before = digests([tmp_path / "texts", tmp_path / "hard", tmp_path / "soft"])
    for argv in refused:
        res = run_cli([*argv, "--device", "cpu"], cwd=texts)
        errors = error_lines(res.stderr)
        assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert "overwrite the input file" in errors[0] and str(texts) in errors[0], errors[0]
    assert digests([tmp_path / "texts", tmp_path / "hard", tmp_path / "soft"]) == before
    assert sorted(p.name for p in texts.iterdir()) == ["a.predictions.jsonl", "a.txt", "new.csv"]
    # two inputs named new.csv in two folders: two predictions files, none replacing the other
    (tmp_path / "other").mkdir()
    (tmp_path / "other/new.csv").write_text("text\ntedious\nboring plot\n")
    res = run_cli(["predict", run, "new.csv", "../other/new.csv", "--out", "../out", "--device", "cpu"], cwd=texts)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = {p.name: p.read_text().splitlines() for p in (tmp_path / "out").iterdir()}
    assert sorted(lines) == ["new.csv-2.predictions.jsonl", "new.csv.predictions.jsonl"]
    assert [json.loads(x)["text"] for x in lines["new.csv.predictions.jsonl"]] == ["lovely and warm"]
    assert [json.loads(x)["text"] for x in lines["new.csv-2.predictions.jsonl"]] == ["tedious", "boring plot"]


def test_bitfit_run_merges_into_a_plain_transformers_directory_relbitfit_does_not(tiny_dir, task_dir, tmp_path):
    result = train(config(tiny_dir, task_dir, tmp_path, "bit", variant="bitfit"))
    assert cli("export-delta", str(result.run_dir), "--merge", str(tmp_path / "merged")) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    assert type(merged).__name__ == "BertForSequenceClassification"
    assert all("forward" not in vars(m) for m in merged.modules())  # nothing of fewlabels' patch
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    run = load_run(result.run_dir)
    batch = {k: v[:, :10] for k, v in run.method.eval_sets()["test"].arrays.items()}
    with torch.no_grad():
        assert torch.equal(merged(**batch).logits, run.model(**batch).logits)
    relbitfit = train(config(tiny_dir, task_dir, tmp_path, "rel2", steps=2, variant="relbitfit"))
    with pytest.raises(ConfigError, match="cannot be merged.*restore_fine_tuned"):
        cli("export-delta", str(relbitfit.run_dir), "--merge", str(tmp_path / "merged2"))
