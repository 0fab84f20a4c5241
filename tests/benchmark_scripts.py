"""benchmarks/ scripts imported as modules for their tests (a helper module, not a conftest: the tests import
``conftest`` by name, which a second conftest.py would shadow)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/<name>.py imported as the module ``name`` (undone with the monkeypatch)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their siblings (_seeds.py, cct_ablation.py)
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module
