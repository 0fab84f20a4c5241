"""The registry is the test matrix: every registered method passes the same battery.

- kill -9 in the middle of training, resume: final weights equal an uninterrupted run's (within 1e-6);
- SIGTERM in the middle of training: the step finishes and is checkpointed, and the resumed run's weights and losses
  equal an uninterrupted run's exactly;
- two processes (gloo) equal one process at the same global batch (loss trajectory and weights);
- save/load round trip of the weights through ``fewlabels.load``;
- a NaN in one step's inputs stops the run with a message, the last good checkpoint intact and finite.
Each method contributes a tiny configuration (small model, a few steps) to ``TINY``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import toy_method  # noqa: F401
from conftest import subprocess_env
from fewlabels.engine import TrainingDiverged, TrainingInterrupted, load_run, train
from fewlabels.engine.checkpoint import latest_valid_checkpoint, list_checkpoints
from fewlabels.registry import available_methods, config_from_dict, get_method

TESTS = Path(__file__).resolve().parents[1]

_SCENES = {"dataset": "scenes", "labeled": 16, "scenes_train": 32, "scenes_val": 4, "scenes_size": 32, "crop_size": 32}

#: method -> tiny config (steps, checkpoint interval and batch are set by the tests)
TINY: dict[str, dict] = {
    "toy": {},
    "supervised": {"data": _SCENES},
    "cct": {"data": _SCENES, "unlabeled_batch_size": 4},
    "cct-cam": {
        "data": _SCENES,
        "model": {"encoder": "small_cnn", "output_stride": 8},
        "cam": {"image_labels": "@image_labels", "crop_size": 24},
        "train": {"epochs": 0.0, "lr": 0.01},  # its own default budget is 5 epochs
    },
    "ac": {
        "data": {"scenes_n": 16, "scenes_size": 32, "input_size": 32, "eval_images": 4},
        "model": {"widths": [8], "decoder_blocks": 1, "k_over": 4},
        "loss": {"displacement": 2},
        "train": {"optimizer": "sgd", "lr": 0.01},
    },
    "scl": {
        "model": {"backbone": "conv4"},
        "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
        "eval": {"shots": [1], "queries": 2, "val_episodes": 3},
        "loss": {"lambda_sc": 0.5, "lambda_gc": 0.5},
    },
    "scl-distill": {
        "model": {"backbone": "conv4"},
        "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
        "eval": {"shots": [1], "queries": 2, "val_episodes": 3},
        "distill": {"teacher": "@teacher"},
    },
    "protonet": {
        "model": {"backbone": "conv4"},
        "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
        "eval": {"shots": [1], "queries": 2, "val_episodes": 3},
        "episodes": {"ways": 3, "shots": 1, "queries": 1, "episodes_per_epoch": 20},
    },
    "seg-pretrain": {
        "data": _SCENES,
        "model": {"projection_dim": 8, "hidden": 16},
        "pretrain": {"crop_size": 32, "positions": 4},
    },
    "relbitfit": {"model": {"dropout": 0.0}, "data": {"n_train": 16, "max_eval": 16, "max_length": 32}},
    "iic": {
        "method": "ac",
        "data": {"scenes_n": 16, "scenes_size": 32, "input_size": 32, "eval_images": 4},
        "model": {"widths": [8], "decoder_blocks": 1, "k_over": 4, "mask_from": "none"},
        "views": {"jitter": 0.2, "flip": True},
        "loss": {"displacement": 2},
        "train": {"optimizer": "sgd", "lr": 0.01},
    },
}


#: For the 2-process comparison, random draws inside the training step are switched off: every rank has its own
#: torch RNG stream (as in any DDP run), so CCT's perturbations or SCL's batch augmentations of a given example
#: differ between a 1-process and a 2-process run. With them off, the comparison checks everything the engine
#: and the methods must get right (sharding, global-batch BatchNorm, loss normalisation, contrastive gathering).
#: Data-side augmentation (``sample(index, rng)``) is keyed by example and stays on.
DETERMINISTIC: dict[str, dict] = {
    "cct": {"perturbations": {"vat": 0, "dropout": 0, "cutout": 0, "feature_drop": 0, "feature_noise": 0}},
    # Both contrastive terms stay on: GC and SC are computed over the gathered global batch. (SC once drifted by
    # ~1e-3 after one step with three same-shaped all_gathers for q, k and v; one gather of [q | k | v] is exact.)
    "scl": {"augment": {"views": ["none", "none"]}},
    "scl-distill": {"augment": {"views": ["none"]}},
    "protonet": {"episodes": {"augment": False}},
}

_TEACHER: list[Path] = []


def _teacher(tmp: Path) -> Path:
    """A tiny trained scl run to distil from (made once per session)."""
    if not _TEACHER:
        cfg = json.loads(json.dumps(TINY["scl"]))
        cfg.update({"method": "scl", "name": "teacher", "output_dir": str(tmp), "seed": 2})
        cfg["train"] = {"steps": 2, "batch_size": 4, "checkpoint_every": 2}
        _TEACHER.append(train(config_from_dict(cfg)).run_dir)
    return _TEACHER[0]


def _config(method: str, tmp: Path, name: str, steps: int, deterministic: bool = False) -> dict:
    cfg = json.loads(json.dumps(TINY[method]))
    for section, values in (DETERMINISTIC.get(method, {}) if deterministic else {}).items():
        cfg.setdefault(section, {}).update(values)
    if cfg.get("distill", {}).get("teacher") == "@teacher":
        cfg["distill"]["teacher"] = str(_teacher(tmp.parent))
    if cfg.get("cam", {}).get("image_labels") == "@image_labels":  # image-level labels of every generated scene
        labels = tmp / "image_labels.json"
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text(json.dumps({f"{i:06d}": [1, 1 + i % 5] for i in range(32)}))
        cfg["cam"]["image_labels"] = str(labels)
    cfg.setdefault("method", method)
    cfg.update({"name": name, "output_dir": str(tmp), "seed": 1})
    cfg.setdefault("train", {}).update(
        {"steps": steps, "checkpoint_every": 2, "log_every": 1, "eval_every": 0, "batch_size": 4, "num_workers": 0}
    )
    return cfg


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _train_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), (
            f"{k}: max diff {(a[k].double() - b[k].double()).abs().max()}"
        )


def test_every_registered_method_has_a_tiny_config():
    covered = {row.get("method", name) for name, row in TINY.items()}
    assert set(available_methods()) <= covered, f"add a TINY row for {set(available_methods()) - covered}"


@pytest.mark.parametrize("method", sorted(TINY))
def test_kill_9_mid_training_then_resume_equals_an_uninterrupted_run(method, tmp_path):
    ref = train(config_from_dict(_config(method, tmp_path, "ref", 5))).run_dir
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(_config(method, tmp_path, "run", 5)))
    env = {**subprocess_env(), "FEWLABELS_TEST_KILL_AT": "3"}  # dies inside step 4, after the step-2 checkpoint
    res = subprocess.run(
        [sys.executable, str(TESTS / "kill_during_step.py"), "train", str(cfg_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == -9, res.stderr[-2000:]
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002.pt"]
    train(config_from_dict(yaml.safe_load(cfg_file.read_text())), run)
    _close(_weights(ref), _weights(run), atol=1e-6)
    assert _train_losses(run) == pytest.approx(_train_losses(ref), abs=1e-6)
    # the reloaded model is the trained one
    loaded = load_run(run, which="last", device="cpu")
    state = loaded.model.state_dict()
    stored = loaded.method.saved_state(loaded.model)  # None: the whole model; else the part it stores (a delta)
    _close({k: state[k] for k in (state if stored is None else stored)}, _weights(run), atol=0)


@pytest.mark.parametrize("method", sorted(TINY))
def test_sigterm_mid_training_checkpoints_the_step_and_resume_equals_an_uninterrupted_run(
    method, tmp_path, monkeypatch
):
    ref = train(config_from_dict(_config(method, tmp_path, "ref", 5))).run_dir
    config = config_from_dict(_config(method, tmp_path, "run", 5))
    cls = get_method(config.method)
    original = cls.training_step

    def training_step(self, model, batch, step, total_steps):
        out = original(self, model, batch, step, total_steps)
        if step == 2:  # SIGTERM arrives during the 3rd step, after the step-2 checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(cls, "training_step", training_step)
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM after step 3/") as stop:
        train(config)
    assert stop.value.exit_code == 143
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002.pt", "step_00000003.pt"]
    monkeypatch.setattr(cls, "training_step", original)
    train(config, run)
    _close(_weights(ref), _weights(run), atol=0)
    assert _train_losses(run) == _train_losses(ref)


@pytest.mark.parametrize("method", sorted(TINY))
def test_two_processes_equal_one_process(method, tmp_path):
    single = train(config_from_dict(_config(method, tmp_path, "single", 3, deterministic=True))).run_dir
    cfg_file = tmp_path / "dist.yaml"
    cfg_file.write_text(yaml.safe_dump(_config(method, tmp_path, "dist", 3, deterministic=True)))
    port = 29600 + sorted(TINY).index(method)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        str(TESTS / "toy_method.py"),
        "train",
        str(cfg_file),
    ]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    dist = tmp_path / "dist"
    assert _train_losses(dist) == pytest.approx(_train_losses(single), abs=1e-4)
    _close(_weights(single), _weights(dist), atol=1e-4)
    assert res.stderr.count("step 3/3") <= 1  # progress printed by one rank only


def _poison(batch, model) -> None:
    """Set every floating-point input of ``batch`` to NaN in place; a batch of token ids (no float input) gets
    its NaN where the ids become vectors, in the output of the model's first embedding layer (once)."""
    poisoned = False
    for source in batch.values():
        for value in source.values():
            if torch.is_tensor(value) and value.is_floating_point():
                value.fill_(float("nan"))
                poisoned = True
    if not poisoned:
        embedding = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
        handle = None

        def hook(module, args, output):
            handle.remove()
            return output * float("nan")

        handle = embedding.register_forward_hook(hook)


@pytest.mark.parametrize("method", sorted(TINY))
def test_a_nan_in_a_batch_stops_the_run_and_keeps_the_last_good_checkpoint(method, tmp_path, monkeypatch):
    cfg = _config(method, tmp_path, "nan", 6)
    cfg["train"]["checkpoint_every"] = 1
    config = config_from_dict(cfg)
    cls = get_method(config.method)
    original = cls.training_step

    def training_step(self, model, batch, step, total_steps):
        if step == 3:  # the 4th optimizer step
            _poison(batch, model)
        return original(self, model, batch, step, total_steps)

    monkeypatch.setattr(cls, "training_step", training_step)
    with pytest.raises(TrainingDiverged, match=r"NaN or infinite at step 4.*step_00000003\.pt\) is intact"):
        train(config)
    path, state = latest_valid_checkpoint(tmp_path / "nan" / "checkpoints")
    assert path.name == "step_00000003.pt" and state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
