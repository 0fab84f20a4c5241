"""Configuration: defaults, YAML + overrides, and errors that name the key and the valid choices."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

import toy_method  # noqa: F401
from conftest import subprocess_env
from fewlabels.config import ConfigError, apply_overrides, parse_override
from fewlabels.registry import config_from_dict, load_config


def test_overrides_are_parsed_as_yaml_values():
    assert parse_override("train.lr=0.5") == (["train", "lr"], 0.5)
    assert parse_override("data.scale=[0.5, 2.0]") == (["data", "scale"], [0.5, 2.0])
    assert apply_overrides({"train": {"lr": 1}}, ["train.lr=2", "seed=3"]) == {"train": {"lr": 2}, "seed": 3}


def test_a_section_in_yaml_keeps_the_methods_own_defaults_for_other_keys():
    cfg = config_from_dict({"method": "toy", "train": {"steps": 3}})
    assert cfg.train.steps == 3
    assert cfg.train.scheduler == "constant"  # the toy method's default, not TrainConfig's "poly"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": "supervised", "train": {"lr": 0.1, "steps": 5}}))
    cfg = load_config(str(path), ["train.steps=7", "model.encoder=resnet18", "data.scale=[0.5, 1.0]"])
    assert (cfg.train.lr, cfg.train.steps, cfg.model.encoder, cfg.data.scale) == (
        0.1,
        7,
        "resnet18",
        (0.5, 1.0),
    )


@pytest.mark.parametrize(
    "data, key, fragment",
    [
        ({"train": {"lrr": 0.1}}, "train.lrr", "did you mean 'lr'"),
        ({"train": {"steps": "many"}}, "train.steps", "expected an integer"),
        ({"train": {"optimizer": "sgdd"}}, "train.optimizer", "did you mean 'sgd'"),
        ({"train": {"batch_size": 0}}, "train.batch_size", "must be >= 1"),
        ({"train": {"lr": -1.0}}, "train.lr", "must be > 0"),
        ({"model": {"encoder": "resnet5"}}, "model.encoder", "did you mean 'resnet50'"),
        ({"data": {"dataset": "voc"}}, "data.root", "needs data.root"),
        ({"data": {"scale": [2.0, 1.0]}}, "data.scale", "0 < low <= high"),
        ({"method": "supervized"}, "method", "did you mean 'supervised'"),
        ({"train": 3}, "train", "expected a section"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(data, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"method": "supervised", **data})
    assert err.value.key == key
    assert fragment in str(err.value)


def test_cli_rejects_a_bad_key_before_any_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": "supervised", "output_dir": str(tmp_path)}))
    res = subprocess.run(
        [sys.executable, "-m", "fewlabels", "train", str(path), "train.optimiser=adam"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert res.returncode == 2
    assert "train.optimiser" in res.stderr and "did you mean 'optimizer'" in res.stderr
    assert not any(tmp_path.glob("supervised-*")), "a run directory was created before validation"
