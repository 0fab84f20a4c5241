"""Faults of the machine and of the numbers: a full disk, a read-only run directory, weights that are not finite,
and an evaluation that fails. Each leaves the checkpoints on disk intact and, on the command line, ends with one
``error:`` line and no traceback."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

import toy_method  # noqa: F401  (registers the "toy" method)
from fewlabels.cli import main
from fewlabels.engine import CheckpointError, TrainingDiverged, allocator, load_run, train
from fewlabels.engine.checkpoint import (
    file_digest,
    latest_valid_checkpoint,
    list_checkpoints,
    load_weights,
    save_checkpoint,
    save_weights,
)
from fewlabels.registry import config_from_dict


def toy_config(tmp_path: Path, name: str, **train_kw) -> dict:
    train_cfg = {"steps": 8, "checkpoint_every": 4, "log_every": 1, "batch_size": 8, **train_kw}
    return {"method": "toy", "name": name, "output_dir": str(tmp_path / "runs"), "train": train_cfg}


def weights(run_dir: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / name))


def assert_equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def val_records(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "val"]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, list[str]]]:
    """Run ``fewlabels`` in this process; returns the exit status and the ``error:`` lines (no traceback allowed)."""
    monkeypatch.setattr(allocator, "_opted_in", False)  # main() opts in; the test process is put back as it was

    def run(*args: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        code = main(list(args))
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        return code, [line for line in err.splitlines() if line.startswith("error:")]

    return run


def _write_config(tmp_path: Path, data: dict) -> str:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _fail_writes_under(monkeypatch: pytest.MonkeyPatch, root: Path, code: int) -> None:
    """Every ``Path.write_text`` below ``root`` fails with ``code`` (ENOSPC: the disk is full)."""
    real = Path.write_text

    def write_text(self: Path, *args, **kwargs):
        if root.resolve() in self.resolve().parents:
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


# --- a full disk ---------------------------------------------------------------------------------------------------
def test_a_full_disk_at_a_checkpoint_stops_in_one_line_and_keeps_the_previous_one(tmp_path, monkeypatch, cli):
    ref = train(config_from_dict(toy_config(tmp_path, "ref"))).run_dir
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "step_00000008" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code, errors = cli("train", _write_config(tmp_path, toy_config(tmp_path, "full")))
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0], errors
    run = tmp_path / "runs" / "full"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000004.pt"]
    assert not list(run.rglob("*.tmp")), "temporary file left behind"
    found = latest_valid_checkpoint(run / "checkpoints")
    assert found is not None and found[1]["step"] == 4

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the run resumes and ends as if nothing happened
    train(config_from_dict(toy_config(tmp_path, "full")), run)
    assert_equal_weights(weights(ref), weights(run))


def test_a_full_disk_at_the_start_of_a_run_is_one_line(tmp_path, monkeypatch, cli):
    cfg = _write_config(tmp_path, toy_config(tmp_path, "fresh"))
    _fail_writes_under(monkeypatch, tmp_path / "runs", errno.ENOSPC)
    code, errors = cli("train", cfg)
    assert code == 2 and len(errors) == 1, errors
    assert "cannot write to the run directory" in errors[0] and "No space left on device" in errors[0]
    assert not list_checkpoints(tmp_path / "runs" / "fresh" / "checkpoints")


def test_a_full_disk_at_the_start_of_a_resume_leaves_the_run_intact(tmp_path, monkeypatch, cli):
    run = train(config_from_dict(toy_config(tmp_path, "resumed", steps=4))).run_dir
    before = {p.name: file_digest(p) for p in [run / "config.yaml", *list_checkpoints(run / "checkpoints")]}
    _fail_writes_under(monkeypatch, tmp_path / "runs", errno.ENOSPC)
    code, errors = cli("train", "--resume", str(run), "train.steps=8")
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0], errors
    after = {p.name: file_digest(p) for p in [run / "config.yaml", *list_checkpoints(run / "checkpoints")]}
    assert after == before
    monkeypatch.undo()
    monkeypatch.setattr(allocator, "_opted_in", False)
    assert cli("train", "--resume", str(run), "train.steps=8") == (0, [])


# --- a read-only run directory -------------------------------------------------------------------------------------
def _read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Every open of a file below ``root`` for writing fails with EROFS, as on a read-only mount."""
    real_os_open, real_open = os.open, builtins.open

    def inside(path) -> bool:
        return isinstance(path, str | os.PathLike) and Path(path).resolve().is_relative_to(root.resolve())

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)


def test_resuming_a_run_on_a_read_only_file_system_is_one_line(tmp_path, monkeypatch, cli):
    run = train(config_from_dict(toy_config(tmp_path, "ro", steps=4))).run_dir
    (run / ".lock").unlink()  # as a run copied without it: the lock file has to be created
    before = {p: file_digest(p) for p in run.rglob("*") if p.is_file()}
    _read_only(monkeypatch, run)
    code, errors = cli("train", "--resume", str(run), "train.steps=8")
    assert {p: file_digest(p) for p in run.rglob("*") if p.is_file()} == before
    assert code == 2 and len(errors) == 1, errors
    assert f"cannot write to the run directory {run}" in errors[0] and "Read-only file system" in errors[0]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_resuming_a_run_whose_directory_is_not_writable_is_one_line(tmp_path, cli):
    run = train(config_from_dict(toy_config(tmp_path, "locked", steps=4))).run_dir
    paths = [run, *run.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        code, errors = cli("train", "--resume", str(run), "train.steps=8")
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert code == 2 and len(errors) == 1 and f"cannot write to the run directory {run}" in errors[0], errors


# --- weights that are not finite -----------------------------------------------------------------------------------
def test_a_learning_rate_that_is_not_a_finite_number_is_refused_before_any_work(tmp_path, cli):
    cfg = _write_config(tmp_path, toy_config(tmp_path, "nanlr"))
    for value in (".nan", ".inf", "-0.1"):
        code, errors = cli("train", cfg, f"train.lr={value}")
        assert code == 2 and len(errors) == 1 and "train.lr" in errors[0], errors
    assert not (tmp_path / "runs").exists()


def test_weights_that_become_nan_with_a_finite_loss_are_never_saved(tmp_path, monkeypatch):
    def poison(self, model, step):
        if step == 3:  # after the 4th optimizer step, whose loss was finite
            with torch.no_grad():
                model[0].weight[0, 0] = float("nan")

    monkeypatch.setattr(toy_method.ToyMethod, "after_optimizer_step", poison)
    with pytest.raises(TrainingDiverged, match=r"weights became NaN or infinite at step 4 \(0\.weight\).*"):
        train(config_from_dict(toy_config(tmp_path, "nanw", checkpoint_every=2)))
    run = tmp_path / "runs" / "nanw"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002.pt"]
    assert all(torch.isfinite(v).all() for v in weights(run).values())


def _nan_model() -> nn.Module:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.bias[1] = float("inf")
    return model


def test_saving_non_finite_weights_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(CheckpointError, match=r"refusing to write .*model\.safetensors.*NaN or infinite.*bias"):
        save_weights(_nan_model(), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"refusing to write .*step_00000001\.pt"):
        save_checkpoint(tmp_path / "checkpoints", 1, {"step": 1, "model": _nan_model().state_dict()}, keep=2)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_loading_non_finite_weights_is_refused_naming_the_file(tmp_path, cli):
    run = train(config_from_dict(toy_config(tmp_path, "loaded", steps=2, checkpoint_every=2))).run_dir
    poisoned = {k: v.clone() for k, v in weights(run, "best.safetensors").items()}
    poisoned["0.weight"][0, 0] = float("nan")
    save_file(poisoned, str(run / "best.safetensors"))
    with pytest.raises(CheckpointError, match=r"best\.safetensors holds NaN or infinite values in 0\.weight"):
        load_run(run, device="cpu")
    code, errors = cli("eval", str(run), "--device", "cpu")
    assert code == 2 and len(errors) == 1 and str(run / "best.safetensors") in errors[0], errors
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_weights(
            toy_method.ToyMethod(config_from_dict(toy_config(tmp_path, "x"))).build_model(), run / "best.safetensors"
        )


def test_a_checkpoint_holding_non_finite_weights_is_skipped_for_the_previous_one(tmp_path):
    good = {"step": 1, "model": nn.Linear(2, 2).state_dict()}
    save_checkpoint(tmp_path, 1, good, keep=3)
    bad_path = tmp_path / "step_00000002.pt"
    torch.save({"step": 2, "model": _nan_model().state_dict()}, bad_path)  # written around the guard
    bad_path.with_suffix(".sha256").write_text(file_digest(bad_path))
    found = latest_valid_checkpoint(tmp_path)
    assert found is not None and found[1]["step"] == 1


# --- evaluation after the checkpoint -------------------------------------------------------------------------------
def _failing_evaluation(monkeypatch: pytest.MonkeyPatch, at_step: int) -> list[int]:
    """Make the toy method's evaluation fail once the model has trained ``at_step`` steps; returns the call log."""
    original = toy_method.ToyMethod.evaluate
    calls: list[int] = []

    def evaluate(self, model, device):
        calls.append(1)
        if len(calls) == at_step:
            raise RuntimeError("the validation data became unreadable")
        return original(self, model, device)

    monkeypatch.setattr(toy_method.ToyMethod, "evaluate", evaluate)
    return calls


def test_an_evaluation_that_fails_at_the_end_leaves_the_last_steps_checkpointed(tmp_path, monkeypatch):
    ref = train(config_from_dict(toy_config(tmp_path, "ref", checkpoint_every=5))).run_dir
    _failing_evaluation(monkeypatch, at_step=1)
    config = config_from_dict(toy_config(tmp_path, "evalfails", checkpoint_every=5))
    with pytest.raises(RuntimeError, match="validation data became unreadable"):
        train(config)
    run = tmp_path / "runs" / "evalfails"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000005.pt", "step_00000008.pt"]
    assert_equal_weights(weights(ref), weights(run))

    monkeypatch.undo()  # the data is back: resuming evaluates the finished run, as the uninterrupted one did
    result = train(config, run)
    assert val_records(run) == val_records(ref) and [r["step"] for r in val_records(run)] == [8]
    assert result.metrics and result.best is not None and result.best["step"] == 8
    assert json.loads((run / "best.json").read_text()) == json.loads((ref / "best.json").read_text())


def test_an_evaluation_that_fails_at_an_evaluation_step_leaves_that_step_checkpointed(tmp_path, monkeypatch):
    ref = train(config_from_dict(toy_config(tmp_path, "ref", checkpoint_every=5, eval_every=3))).run_dir
    _failing_evaluation(monkeypatch, at_step=1)
    config = config_from_dict(toy_config(tmp_path, "midfail", checkpoint_every=5, eval_every=3))
    with pytest.raises(RuntimeError, match="validation data became unreadable"):
        train(config)
    run = tmp_path / "runs" / "midfail"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000003.pt"]

    monkeypatch.undo()
    train(config, run)
    assert val_records(run) == val_records(ref)
    assert [r["step"] for r in val_records(run)] == [3, 6, 8]
    assert_equal_weights(weights(ref), weights(run))
    assert_equal_weights(weights(ref, "best.safetensors"), weights(run, "best.safetensors"))


def test_a_resume_that_cannot_read_its_checkpoints_leaves_the_runs_config_alone(tmp_path, cli):
    run = train(config_from_dict(toy_config(tmp_path, "corrupt", steps=4))).run_dir
    before = (run / "config.yaml").read_bytes()
    for path in list_checkpoints(run / "checkpoints"):
        path.write_bytes(b"not a checkpoint")
    code, errors = cli("train", "--resume", str(run), "train.steps=8")
    assert code != 0 and len(errors) == 1 and "none of the" in errors[0]
    assert (run / "config.yaml").read_bytes() == before  # the failed resume did not write its steps=8 into the run
    assert yaml.safe_load(before)["train"]["steps"] == 4
