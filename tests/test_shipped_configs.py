"""Every YAML file under configs/ validates against its method's schema (with a placeholder data.root)."""

from __future__ import annotations

from pathlib import Path

import pytest

import toy_method  # noqa: F401
from fewlabels.config import read_yaml
from fewlabels.registry import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs_for_every_method_family():
    families = {p.parent.name for p in CONFIGS}
    assert {"supervised", "cct", "ac", "scl", "relbitfit"} <= families


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_shipped_config_validates(path):
    data = read_yaml(path).get("data", {})
    overrides = (
        []
        if data.get("root") or data.get("dataset") in (None, "scenes", "glyphs", "rotten-tomatoes")
        else ["data.root=/path/to/data"]
    )
    cfg = load_config(str(path), overrides)
    assert cfg.method == read_yaml(path)["method"]
