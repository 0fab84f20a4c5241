"""One live process per run directory: a second writer is refused in one line, a dead one never blocks a resume,
and default names never collide."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import toy_method  # noqa: F401  (registers the "toy" method)
from conftest import subprocess_env
from fewlabels.engine import RunDirError, TrainingDiverged, train
from fewlabels.engine import trainer as trainer_module
from fewlabels.engine.checkpoint import list_checkpoints
from fewlabels.engine.rundir import LOCK_NAME, RunDirLock, create_unique_dir
from fewlabels.registry import config_from_dict

TESTS = Path(__file__).resolve().parents[1]
ENTRY = str(TESTS / "toy_method.py")  # the CLI with the test-only "toy" method registered


def toy_config(tmp_path: Path, name: str = "", **train_kw) -> dict:
    train_cfg = {"steps": 4, "checkpoint_every": 2, "log_every": 1, "batch_size": 8, **train_kw}
    return {"method": "toy", "name": name, "output_dir": str(tmp_path), "train": train_cfg}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, ENTRY, *args], env=subprocess_env(), capture_output=True, text=True, timeout=180
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_live_run_keeps_its_directory_and_a_killed_one_can_be_resumed(tmp_path):
    data = toy_config(tmp_path, "dup", steps=1000)  # far longer than the test: it is killed at the end
    data["step_delay"] = 0.2
    cfg_file = tmp_path / "dup.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    first = subprocess.Popen(
        [sys.executable, ENTRY, "train", str(cfg_file)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run = tmp_path / "dup"
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "step_00000002.sha256").exists():
            assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
            assert time.time() < deadline, "the first run never wrote a checkpoint"
            time.sleep(0.02)
        config_before = _digest(run / "config.yaml")

        # The same name, started while the first run trains (before or after its first checkpoint), is refused.
        (tmp_path / "dup2.yaml").write_text(yaml.safe_dump({**data, "seed": 7}))
        for args in (["train", str(tmp_path / "dup2.yaml")], ["train", "--resume", str(run)]):
            res = _cli(*args)
            assert res.returncode == 2, res.stderr[-2000:]
            assert "Traceback" not in res.stderr
            errors = _error_lines(res.stderr)
            assert len(errors) == 1, res.stderr[-2000:]
            assert "in use by another training process" in errors[0] and f"pid {first.pid}" in errors[0]
        assert _digest(run / "config.yaml") == config_before, "the refused process wrote the run's config"
        assert first.poll() is None, "the first run was disturbed"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    last = int(list_checkpoints(run / "checkpoints")[-1].stem.split("_")[1])

    # The kernel dropped the dead process's lock: the run resumes at once.
    res = _cli("train", "--resume", str(run), f"train.steps={last + 2}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert list_checkpoints(run / "checkpoints")[-1].name == f"step_{last + 2:08d}.pt"


def test_a_directory_locked_by_another_holder_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "held"
    run.mkdir()
    holder = RunDirLock(run)
    holder.acquire()
    try:
        with pytest.raises(RunDirError, match=r"held is in use by another training process \(pid \d+ on "):
            train(config_from_dict(toy_config(tmp_path, "held")))
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME], "the refused run wrote into the directory"
    finally:
        holder.release()
    assert train(config_from_dict(toy_config(tmp_path, "held"))).steps == 4


def test_the_lock_is_released_when_training_ends_or_fails(tmp_path, monkeypatch):
    done = train(config_from_dict(toy_config(tmp_path, "ok"))).run_dir
    lock = RunDirLock(done)
    lock.acquire()  # would raise if the finished run still held it
    lock.release()

    original = toy_method.ToyMethod.training_step

    def diverging_step(self, model, batch, step, total_steps):
        out = original(self, model, batch, step, total_steps)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(toy_method.ToyMethod, "training_step", diverging_step)
    with pytest.raises(TrainingDiverged):
        train(config_from_dict(toy_config(tmp_path, "bad")))
    lock = RunDirLock(tmp_path / "bad")
    lock.acquire()
    lock.release()


def test_runs_started_in_the_same_second_get_different_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "_default_name", lambda method: f"{method}-20250101-000000")
    first = train(config_from_dict(toy_config(tmp_path, steps=2))).run_dir
    second = train(config_from_dict(toy_config(tmp_path, steps=2))).run_dir
    assert (first.name, second.name) == ("toy-20250101-000000", "toy-20250101-000000-2")
    assert all((run / "config.yaml").is_file() and (run / "model.safetensors").is_file() for run in (first, second))


def test_concurrent_claims_of_one_name_get_one_directory_each(tmp_path):
    claimed: list[Path] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        claimed.append(create_unique_dir(tmp_path, "toy-20250101-000000"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in claimed)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_lock_outlives_nothing_but_its_process(tmp_path):
    run = tmp_path / "forked"
    run.mkdir()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: take the lock, report, then die without any cleanup
        try:
            RunDirLock(run).acquire()
            os.write(write, b"1")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    with pytest.raises(RunDirError, match=f"pid {pid} on"):
        RunDirLock(run).acquire()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    lock = RunDirLock(run)
    lock.acquire()
    assert lock.held
    lock.release()
