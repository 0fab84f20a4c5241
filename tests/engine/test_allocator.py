"""The CPU allocator setting: applied once per process on glibc, and left alone when the user opts out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import subprocess_env

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
