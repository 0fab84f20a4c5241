"""``fewlabels fewshot-eval``: the protocol comes from the run's ``eval`` section; only the flags given replace it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

import fewlabels
from fewlabels.cli import main
from fewlabels.commands.fewshot import add_commands, eval_overrides
from fewlabels.config import write_yaml
from fewlabels.methods.scl.fewshot_eval import evaluate_split
from fewlabels.registry import config_from_dict, get_method

TINY_RUN = {
    "method": "scl",
    "model": {"backbone": "conv4"},
    "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
    "eval": {"shots": [1], "queries": 2, "val_episodes": 3, "episodes": 7, "support_augment": 1},
    "train": {"batch_size": 8},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A few-shot run directory (config.yaml + untrained weights) whose config asks for 7 episodes."""
    folder = tmp_path_factory.mktemp("sclrun")
    config = config_from_dict(TINY_RUN)
    write_yaml(config, folder / "config.yaml")
    torch.manual_seed(0)
    save_model(get_method("scl")(config).build_model(), str(folder / "model.safetensors"))
    return folder


def _evaluate(run_dir: Path, *args: str) -> dict:
    """Run the command with ``args`` (overrides first, then flags) and read the JSON it wrote."""
    assert main(["fewshot-eval", str(run_dir), *args, "--device", "cpu"]) == 0
    return json.loads((run_dir / "fewshot_eval_test.json").read_text())


def test_the_run_config_sets_the_protocol_when_no_flag_is_given(run_dir, capsys):
    result = _evaluate(run_dir)
    assert result["episodes"] == 7 and result["queries"] == 2 and result["support_augment"] == 1
    assert {k for k in result if k.startswith("acc_")} == {"acc_1shot"}
    assert "5-way 1-shot" in capsys.readouterr().out.split("(7 episodes, test split)")[0]


def test_a_flag_replaces_only_its_key(run_dir):
    result = _evaluate(run_dir, "--episodes", "3", "--support-augment", "0")
    assert result["episodes"] == 3 and result["support_augment"] == 0
    assert result["queries"] == 2  # still the run's
    # the flag is the override eval.episodes=N: the same request gives the same numbers
    again = _evaluate(run_dir, "eval.episodes=3", "eval.support_augment=0")
    assert again["acc_1shot"] == result["acc_1shot"] and again["ci95_1shot"] == result["ci95_1shot"]


def test_flags_left_out_give_no_override():
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    assert eval_overrides(parser.parse_args(["fewshot-eval", "run"])) == []
    args = parser.parse_args(["fewshot-eval", "run", "--shots", "1", "5", "--classifier", "nc", "--exact"])
    assert eval_overrides(args) == ["eval.shots=[1, 5]", 'eval.classifier="nc"', "eval.exact=true"]


def test_an_impossible_flag_value_names_the_config_key(run_dir, capsys):
    assert main(["fewshot-eval", str(run_dir), "--device", "cpu", "--ways", "1"]) == 2
    assert "eval.ways" in capsys.readouterr().err


def test_a_run_that_is_not_few_shot_is_refused_before_loading(tmp_path, capsys):
    write_yaml(config_from_dict({"method": "supervised"}), tmp_path / "config.yaml")
    assert main(["fewshot-eval", str(tmp_path), "--episodes", "3"]) == 2
    assert "needs a few-shot run" in capsys.readouterr().err


def test_python_callers_get_the_run_protocol_from_a_loaded_run(run_dir):
    run = fewlabels.load(run_dir, device="cpu")
    result = evaluate_split(run.method, run.model, "test")
    assert result["episodes"] == 7 and result["split"] == "test"
    with_cli = _evaluate(run_dir)
    assert result["acc_1shot"] == with_cli["acc_1shot"]
