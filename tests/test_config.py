"""Configuration: defaults, YAML + overrides, and errors that name the key (or the file and line) and the valid
choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import toy_method  # noqa: F401
from conftest import subprocess_env
from fewlabels.config import ConfigError, ConfigFileError, apply_overrides, build_config, describe, parse_override
from fewlabels.registry import available_methods, config_from_dict, load_config

TESTS = Path(__file__).resolve().parent


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


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_float_that_is_not_finite_is_rejected_naming_the_key(value):
    with pytest.raises(ConfigError) as err:
        load_config_from_overrides(["method=toy", f"train.lr={value}"])
    assert err.value.key == "train.lr"
    assert "finite" in str(err.value)


def test_a_non_finite_float_inside_a_list_is_rejected_naming_the_item():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"method": "supervised", "data": {"scale": [float("nan"), 1.0]}})
    assert err.value.key == "data.scale[0]" and "finite" in str(err.value)


def load_config_from_overrides(overrides: list[str]):
    return config_from_dict(apply_overrides({}, overrides))


_BAD_FILES = {
    "tab.yaml": ("method: toy\ntrain:\n\tsteps: 3\n", 3),
    "indent.yaml": ("method: toy\ntrain:\n  steps: 3\n lr: 0.1\n", 4),
    "brace.yaml": ("method: toy\ntrain: {steps: 3\nseed: 1\n", 3),
    "tag.yaml": ("method: toy\nseed: !!python/object/apply:os.system ['echo pwned']\n", 2),
    "bad.json": ('{"method": "toy",\n "train": {"steps": 3,}\n "seed": 1}\n', 3),
    "control.yaml": ("method: toy\nseed: 1\x00\n", 2),
}


@pytest.mark.parametrize("name", sorted(_BAD_FILES))
def test_a_malformed_config_file_names_the_file_and_the_line(tmp_path, name):
    text, line = _BAD_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigFileError) as err:
        load_config(str(path))
    assert isinstance(err.value, ConfigError)
    assert err.value.line == line
    message = str(err.value)
    assert message.startswith(f"{path}, line {line}: ") and "\n" not in message


def test_a_binary_config_file_is_named_as_not_a_text_file(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_bytes(b"method: toy\n" + bytes(range(128, 256)))
    with pytest.raises(ConfigFileError, match=r"model\.yaml, line 2: not a text file"):
        load_config(str(path))


def test_the_cli_reports_a_malformed_run_config_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: toy\ntrain:\n\tsteps: 3\n")
    res = subprocess.run(
        [sys.executable, str(TESTS / "toy_method.py"), "train", "--resume", str(run)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {run / 'config.yaml'}, line 3: "), res.stderr
    assert "'\\t'" in errors[0]


#: keys a method cannot run without (they have no usable default), given to build its config
_REQUIRED = {"scl-distill": {"distill": {"teacher": "runs/teacher"}}}


def _plain(value):
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_the_defaults_shown_by_methods_are_the_ones_a_run_gets(name):
    cls = available_methods()[name]
    config = build_config(cls.config_class, {"method": name, **_REQUIRED.get(name, {})})
    given = {f"{section}.{key}" for section, keys in _REQUIRED.get(name, {}).items() for key in keys}
    rows = describe(cls.config_class)
    assert rows, name
    for key, _, default, _ in rows:
        if key in given:
            continue
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        assert _plain(default) == _plain(value), f"{name}: {key} is shown as {default!r} but a run gets {value!r}"


def test_methods_shows_the_method_s_own_train_defaults():
    rows = {key: default for key, _, default, _ in describe(available_methods()["toy"].config_class)}
    assert (rows["train.steps"], rows["train.scheduler"], rows["train.lr"]) == (8, "constant", 0.05)
