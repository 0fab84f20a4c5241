"""Runs a teammate can use (issue 18): files written with the user's umask, ``report --out/--weights``, and an
``eval_*.json`` that says how it was obtained.

One tiny ``toy`` run (tests/toy_method.py) is trained in this process under umask 022 and one under umask 077.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import toy_method  # noqa: F401  (registers the "toy" method)
from fewlabels.cli import main
from fewlabels.engine import allocator
from fewlabels.files import current_umask, new_file_mode, share_like_open


def _train_under(umask: int, root: Path, name: str) -> Path:
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "method": "toy",
                "name": name,
                "output_dir": str(root),
                "train": {"steps": 4, "checkpoint_every": 2, "log_every": 1, "batch_size": 8, "eval_every": 2},
            }
        )
    )
    old = os.umask(umask)
    try:
        assert main(["train", str(cfg)]) == 0
        assert main(["eval", str(root / name), "--device", "cpu"]) == 0
    finally:
        os.umask(old)
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Path]]:
    root = tmp_path_factory.mktemp("shared")
    opted = allocator._opted_in
    try:
        yield {mask: _train_under(mask, root, f"u{mask:03o}") for mask in (0o022, 0o077)}
    finally:
        allocator._opted_in = opted  # main() opts the process in; the test process is put back as it was


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _digests(root: Path) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_get_the_mode_the_umask_gives(runs, umask, expected):
    run = runs[umask]
    files = [
        run / "model.safetensors",
        run / "best.safetensors",
        run / "config.yaml",
        run / "metrics.jsonl",
        run / "best.json",
        run / "eval_best.json",
        *sorted((run / "checkpoints").iterdir()),
    ]
    assert sum(f.suffix == ".pt" for f in files) == 2 and sum(f.suffix == ".sha256" for f in files) == 2
    assert {f.name: oct(_mode(f)) for f in files} == {f.name: oct(expected) for f in files}


def test_the_umask_is_read_without_being_changed():
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert new_file_mode() == 0o640
        assert os.umask(0o027) == 0o027  # still what it was set to
    finally:
        os.umask(old)


def test_a_private_temporary_file_becomes_what_open_would_give(tmp_path):
    import tempfile

    old = os.umask(0o002)
    try:
        fd, name = tempfile.mkstemp(dir=tmp_path)
        os.close(fd)
        assert _mode(Path(name)) == 0o600
        share_like_open(name)
        assert _mode(Path(name)) == 0o664
    finally:
        os.umask(old)


def test_eval_json_records_the_weights_device_and_overrides(runs, cli):
    run = runs[0o022]
    code, out, errors = cli("eval", str(run), "data.noise=0.5", "--weights", "last", "--device", "cpu")
    assert code == 0 and errors == []
    written = json.loads((run / "eval_model.json").read_text())
    assert written == json.loads(out)
    assert written["weights"] == "model.safetensors"
    assert written["device"] == "cpu"
    assert written["overrides"] == ["data.noise=0.5"]
    assert written["run_dir"] == str(run) and set(written["metrics"]) == {"neg_mse"}
    plain = json.loads((run / "eval_best.json").read_text())  # written by the fixture without overrides
    assert plain["weights"] == "best.safetensors" and plain["overrides"] == [] and plain["device"] == "cpu"


def test_report_out_writes_elsewhere_and_leaves_the_run_untouched(runs, cli, tmp_path):
    run = runs[0o022]
    before = _digests(run)
    out = tmp_path / "for" / "alice"
    code, stdout, errors = cli("report", str(run), "--out", str(out), "--weights", "last", "--device", "cpu")
    assert code == 0 and errors == []
    assert stdout.strip() == f"report written to {out / 'report.md'}"
    text = (out / "report.md").read_text()
    assert "weights: `model.safetensors`" in text
    assert "![training curves](report/curves.png)" in text and (out / "report" / "curves.png").stat().st_size > 0
    assert _digests(run) == before and not (run / "report.md").exists()

    code, _, errors = cli("report", str(run), "--out", str(out), "--device", "cpu")  # default weights: best
    assert code == 0 and "weights: `best.safetensors`" in (out / "report.md").read_text()


def test_report_out_that_is_a_file_is_one_error_line(runs, cli, tmp_path):
    target = tmp_path / "notes.md"
    target.write_text("mine\n")
    code, stdout, errors = cli("report", str(runs[0o022]), "--out", str(target), "--device", "cpu")
    assert code != 0 and stdout == ""
    assert len(errors) == 1 and "--out" in errors[0] and "existing file" in errors[0], errors
    assert target.read_text() == "mine\n" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o077, 0o600)])
def test_a_relbitfit_delta_gets_the_mode_the_umask_gives(tmp_path, umask, expected):
    from transformers import AutoModelForSequenceClassification, BertConfig

    from fewlabels.methods.relbitfit.delta import save_delta
    from fewlabels.methods.relbitfit.variants import FineTuning, apply_fine_tuning

    config = BertConfig(
        vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, num_labels=2
    )
    model = apply_fine_tuning(AutoModelForSequenceClassification.from_config(config), FineTuning("bitfit"))
    old = os.umask(umask)
    try:
        path = save_delta(model, tmp_path / "delta.safetensors", FineTuning("bitfit"))
    finally:
        os.umask(old)
    assert oct(_mode(path)) == oct(expected)
