"""Engine guarantees: exact resume after SIGKILL, checkpoint fallback, NaN guard, 2-process equivalence."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import toy_method  # noqa: F401  (registers the "toy" method)
from conftest import subprocess_env
from fewlabels.engine import TrainingDiverged, train
from fewlabels.engine.checkpoint import latest_valid_checkpoint, list_checkpoints
from fewlabels.engine.data import StepBatchSampler
from fewlabels.registry import config_from_dict

TESTS = Path(__file__).resolve().parents[1]


def toy_config(tmp_path: Path, name: str, **train_kw) -> dict:
    train_cfg = {"steps": 8, "checkpoint_every": 4, "log_every": 1, "batch_size": 8, **train_kw}
    return {"method": "toy", "name": name, "output_dir": str(tmp_path), "train": train_cfg}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), k


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def test_resume_after_sigkill_continues_the_same_trajectory(tmp_path):
    ref = train(config_from_dict(toy_config(tmp_path, "ref")))

    data = toy_config(tmp_path, "killed")
    data["step_delay"] = 0.25
    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "toy_method.py"), "train", str(cfg_file)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not (ckpt_dir / "step_00000004.sha256").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the run never wrote its first checkpoint"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step_00000004.pt"], "killed too late"

    resumed = train(config_from_dict(yaml.safe_load(cfg_file.read_text())), tmp_path / "killed")
    assert resumed.steps == 8
    assert_same_weights(weights(ref.run_dir), weights(resumed.run_dir))
    assert losses(resumed.run_dir) == pytest.approx(losses(ref.run_dir), abs=1e-6)


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    ref = train(config_from_dict(toy_config(tmp_path, "ref", steps=12)))
    cfg = config_from_dict(toy_config(tmp_path, "run", steps=8))
    run = train(cfg).run_dir
    last = run / "checkpoints" / "step_00000008.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated by a crash
    cfg12 = config_from_dict(toy_config(tmp_path, "run", steps=12))
    with caplog.at_level("WARNING", logger="fewlabels"):
        train(cfg12, run)
    assert any("step_00000008.pt" in r.message and "corrupt" in r.message for r in caplog.records)
    assert_same_weights(weights(ref.run_dir), weights(run))


def test_nan_in_a_batch_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    # The example that the sampler puts first in micro-step 3 (the 4th step) carries a NaN.
    bad = StepBatchSampler(64, 8, seed=0, source=0).global_batch(3)[0][0]
    data = toy_config(tmp_path, "nan", checkpoint_every=1)
    data["data"] = {"nan_index": bad}
    with pytest.raises(TrainingDiverged, match="NaN or infinite at step 4"):
        train(config_from_dict(data))
    found = latest_valid_checkpoint(tmp_path / "nan" / "checkpoints")
    assert found is not None and found[1]["step"] == 3
    assert all(torch.isfinite(v).all() for v in found[1]["model"].values() if v.is_floating_point())


def _single_run_and_dist_config(tmp_path: Path) -> tuple[Path, Path]:
    """A finished 1-process run of 6 steps, and the config file of the same run named ``dist``."""
    single = train(config_from_dict(toy_config(tmp_path, "single", steps=6))).run_dir
    cfg_file = tmp_path / "dist.yaml"
    cfg_file.write_text(yaml.safe_dump(toy_config(tmp_path, "dist", steps=6)))
    return single, cfg_file


def _assert_same_run_with_one_writer(single: Path, dist: Path) -> None:
    assert losses(dist) == pytest.approx(losses(single), abs=1e-5)
    assert_same_weights(weights(single), weights(dist), atol=1e-5)
    # One writer: a single metrics line per step and one checkpoint set.
    assert len(losses(dist)) == 6
    assert [p.name for p in list_checkpoints(dist / "checkpoints")] == [
        "step_00000004.pt",
        "step_00000006.pt",
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_at_the_same_global_batch(tmp_path):
    single, cfg_file = _single_run_and_dist_config(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        str(TESTS / "toy_method.py"),
        "train",
        str(cfg_file),
    ]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_run_with_one_writer(single, tmp_path / "dist")
    # one result JSON on stdout (rank 0's), not one per process
    assert res.stdout.count('"run_dir"') == 1, res.stdout
    printed = json.loads(res.stdout[res.stdout.index("{") :])
    assert printed["run_dir"] == str(tmp_path / "dist") and printed["steps"] == 6


def _node_launches(launcher: str, cfg_file: Path) -> list[tuple[list[str], dict[str, str]]]:
    """The command and environment of each of two one-process "nodes", as docs/multi_gpu.md launches them."""
    train_cmd = [str(TESTS / "toy_method.py"), "train", str(cfg_file)]
    port = _free_port()
    if launcher == "torchrun-c10d":  # the same command on every node; the rendezvous assigns the node ranks
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes", *train_cmd]
        return [(cmd, subprocess_env()) for _ in range(2)]
    # srun without a launcher: every task exports what torchrun would (SLURM_PROCID -> RANK, ...)
    env = {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return [([sys.executable, *train_cmd], {**subprocess_env(), **env, "RANK": str(r)}) for r in range(2)]


@pytest.mark.parametrize("launcher", ["torchrun-c10d", "srun-env"])
def test_two_nodes_equal_one_process(launcher, tmp_path):
    """Two one-process "nodes" started separately, as on two machines, give the 1-process run (docs/multi_gpu.md).

    Both share this file system, so the run directory must be written by global rank 0 only: each node's local
    rank 0 writing would show up as duplicated metrics lines or checkpoints.
    """
    single, cfg_file = _single_run_and_dist_config(tmp_path)
    nodes = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd, env in _node_launches(launcher, cfg_file)
    ]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    _assert_same_run_with_one_writer(single, tmp_path / "dist")
    # the result JSON is printed by global rank 0 only, whichever node the rendezvous made it
    assert sorted(out.count('"run_dir"') for out, _ in outputs) == [0, 1], outputs
