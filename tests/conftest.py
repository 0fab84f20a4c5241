"""Test session setup: a private dataset cache, and no network access beyond loopback."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden"
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("FEWLABELS_CACHE", str(ROOT / ".pytest_cache" / "fewlabels-data"))
os.environ["HF_HUB_OFFLINE"] = "1"
# One thread everywhere: the test process and the CLI subprocesses it compares against must reduce in the same
# order to agree bit for bit (and two gloo processes on two cores must not oversubscribe them).
torch.set_num_threads(1)
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):  # unix sockets
        return True
    return host in {"localhost", "::1", ""} or host.startswith("127.") or host.startswith("/")


_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise RuntimeError(f"network access during tests is not allowed (tried {address!r})")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden vectors not found at {GOLDEN} (they live in ../shared/golden)")
    return GOLDEN


def subprocess_env() -> dict[str, str]:
    """Environment for CLI subprocesses: the tests folder importable, the same cache, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``fewlabels ARGS`` in this process: (exit status, stdout, the ``error:`` lines); a traceback fails the test."""
    from fewlabels.cli import main
    from fewlabels.engine import allocator

    monkeypatch.setattr(allocator, "_opted_in", False)  # main() opts in; the test process is put back as it was

    def run(*args: str) -> tuple[int, str, list[str]]:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        return code, captured.out, [line for line in captured.err.splitlines() if line.startswith("error:")]

    return run
