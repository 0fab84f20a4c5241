"""Engine guarantees: exact resume after SIGKILL, checkpoint fallback, NaN guard, 2-process equivalence."""

from __future__ import annotations

import json
import os
import signal
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


def test_two_processes_equal_one_process_at_the_same_global_batch(tmp_path):
    single = train(config_from_dict(toy_config(tmp_path, "single", steps=6))).run_dir
    cfg_file = tmp_path / "dist.yaml"
    cfg_file.write_text(yaml.safe_dump(toy_config(tmp_path, "dist", steps=6)))
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
    dist = tmp_path / "dist"
    assert losses(dist) == pytest.approx(losses(single), abs=1e-5)
    assert_same_weights(weights(single), weights(dist), atol=1e-5)
    # One writer: a single metrics line per step and one checkpoint set.
    assert len(losses(dist)) == 6
    assert [p.name for p in list_checkpoints(dist / "checkpoints")] == [
        "step_00000004.pt",
        "step_00000006.pt",
    ]
