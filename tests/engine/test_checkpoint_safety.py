"""Checkpoint files: atomic writes, digests, safe loading, and the data stream they resume."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from fewlabels.config import TrainConfig
from fewlabels.engine.checkpoint import (
    CheckpointError,
    file_digest,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from fewlabels.engine.data import StepBatchSampler
from fewlabels.engine.trainer import lr_factor


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_carrying_code_is_refused(tmp_path):
    path = tmp_path / "step_00000001.pt"
    torch.save({"model": {}, "payload": _Exploit()}, path)
    path.with_suffix(".sha256").write_text(file_digest(path))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(3)}, keep=2)
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # half the bytes made it to disk, then the device filled up
            fh.truncate(os.path.getsize(f) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.zeros(3)}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"
    path, state = latest_valid_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004.pt", "step_00000005.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == [
        "step_00000004.sha256",
        "step_00000005.sha256",
    ]


def test_a_checkpoint_without_its_digest_is_not_trusted(tmp_path):
    save_checkpoint(tmp_path, 1, {"step": 1}, keep=2)
    save_checkpoint(tmp_path, 2, {"step": 2}, keep=2)
    (tmp_path / "step_00000002.sha256").unlink()  # killed between the two writes
    assert latest_valid_checkpoint(tmp_path)[1]["step"] == 1


def test_shards_of_two_processes_make_up_the_global_batch():
    single = StepBatchSampler(20, 4, seed=3, source=0)
    r0 = iter(StepBatchSampler(20, 4, seed=3, source=0, rank=0, world=2))
    r1 = iter(StepBatchSampler(20, 4, seed=3, source=0, rank=1, world=2))
    for m, batch in zip(range(12), iter(single)):
        assert sorted(next(r0) + next(r1)) == sorted(batch)
        assert batch == single.global_batch(m)


def test_the_stream_restarts_at_any_micro_step_and_reshuffles_each_epoch():
    full = iter(StepBatchSampler(10, 5, seed=0, source=1))
    batches = [next(full) for _ in range(6)]
    resumed = iter(StepBatchSampler(10, 5, seed=0, source=1, start=3))
    assert [next(resumed) for _ in range(3)] == batches[3:]
    epochs = [sorted(i for b in batches[e * 2 : (e + 1) * 2] for i, _ in b) for e in range(3)]
    assert all(e == list(range(10)) for e in epochs)  # every example once per epoch
    assert [i for i, _ in batches[0]] != [i for i, _ in batches[2]]  # reshuffled
    assert batches[0][0][1] != batches[2][0][1] or batches[0][0][0] != batches[2][0][0]


def test_poly_learning_rate_matches_the_reference_schedule(golden_dir):
    import numpy as np

    g = np.load(golden_dir / "cct_losses.npz")
    cfg = TrainConfig(scheduler="poly", poly_power=0.9)
    total = int(g["poly_total_steps"])
    got = [lr_factor(cfg, int(s), total) for s in g["poly_steps"]]
    np.testing.assert_allclose(got, g["poly_factors"], rtol=1e-6)
