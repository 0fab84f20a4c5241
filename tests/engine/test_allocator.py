"""The CPU allocator setting: applied once per process on glibc, left alone when the user opts out, and never
made by the library in a user's Python process unless it opts in (the command line does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fewlabels
import toy_method  # noqa: F401  (registers the "toy" method)
from conftest import subprocess_env
from fewlabels.cli import main
from fewlabels.engine import allocator
from fewlabels.registry import config_from_dict

_PROBE = (
    "from fewlabels.engine.allocator import keep_freed_memory as k; "
    "a = k(); b = k(); import torch; x = torch.ones(4096, 1024); y = x * 2; del x, y; print(a, b)"
)


def _probe(**env: str) -> str:
    res = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**subprocess_env(), **env}, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_thresholds_are_set_once_per_process_on_glibc() -> None:
    assert _probe() == "True True"


@pytest.mark.parametrize(
    "env", [{"FEWLABELS_MALLOC_TUNING": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}, {"MALLOC_TRIM_THRESHOLD_": "0"}]
)
def test_an_opt_out_or_the_users_own_thresholds_are_respected(env: dict[str, str]) -> None:
    assert _probe(**env) == "False False"


def _record_tuning(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the mallopt switch by a recorder, with this process not opted in (restored after the test)."""
    calls: list[int] = []

    def fake_keep_freed_memory() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(allocator, "keep_freed_memory", fake_keep_freed_memory)
    monkeypatch.setattr(allocator, "_opted_in", False)
    monkeypatch.delenv("FEWLABELS_MALLOC_TUNING", raising=False)
    return calls


def _toy(tmp_path: Path, name: str) -> dict:
    train = {"steps": 2, "checkpoint_every": 2, "device": "cpu"}
    return {"method": "toy", "name": name, "output_dir": str(tmp_path), "train": train}


def test_training_from_a_users_python_process_leaves_malloc_alone(tmp_path, monkeypatch):
    calls = _record_tuning(monkeypatch)
    fewlabels.train(config_from_dict(_toy(tmp_path, "library")))
    assert calls == [], "the library changed the process's malloc settings without being asked"


def test_the_command_line_opts_in_to_the_allocator_setting(tmp_path, monkeypatch, capsys):
    calls = _record_tuning(monkeypatch)
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(_toy(tmp_path, "cli")))
    assert main(["train", str(cfg)]) == 0
    assert calls == [1]


def test_the_environment_opts_a_python_process_in(tmp_path, monkeypatch):
    calls = _record_tuning(monkeypatch)
    monkeypatch.setenv("FEWLABELS_MALLOC_TUNING", "1")
    fewlabels.train(config_from_dict(_toy(tmp_path, "env")))
    assert calls == [1]
