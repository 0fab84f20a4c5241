"""Every long command shows its progress on stderr (issue 18, item 3) while stdout keeps its results unchanged.

The commands run in this process (``main``) with ``FEWLABELS_PROGRESS_INTERVAL=0``, so that each step of a loop
writes its status line (stderr is not a terminal here); one tiny supervised run on a seg-folder of four images and
one tiny few-shot run serve every test.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_model

from fewlabels.cli import main
from fewlabels.config import write_yaml
from fewlabels.engine import allocator
from fewlabels.progress import INTERVAL_ENV, SWITCH_ENV
from fewlabels.registry import config_from_dict, get_method, load_config

SIZE = 32
#: ``label: n/total unit, ...``: one status line
STATUS = re.compile(r"^(?P<label>[\w .-]+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+), ")


def _status(err: str, label: str) -> list[tuple[int, int, str]]:
    """``(n, total, line)`` of the status lines of ``label`` in ``err``."""
    found = [(STATUS.match(line), line) for line in err.splitlines()]
    return [(int(m["n"]), int(m["total"]), line) for m, line in found if m and m["label"] == label]


@pytest.fixture(autouse=True)
def _every_step_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0")
    monkeypatch.delenv(SWITCH_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(allocator, "_opted_in", False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A folder with a seg-folder dataset (4 images), two images to predict on and a trained supervised run; and
    what training wrote on stderr."""
    t = tmp_path_factory.mktemp("progress")
    rng = np.random.default_rng(0)
    for i in range(4):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[:, SIZE // 2 :] = 1
        (t / "data/images").mkdir(parents=True, exist_ok=True)
        (t / "data/masks").mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(image).save(t / f"data/images/im{i}.png")
        Image.fromarray(mask).save(t / f"data/masks/im{i}.png")
        if i < 2:
            (t / "photos").mkdir(exist_ok=True)
            Image.fromarray(image).save(t / f"photos/p{i}.png")
    config = {
        "method": "supervised",
        "name": "segrun",
        "output_dir": str(t / "runs"),
        "model": {"encoder": "small_cnn"},
        "data": {"dataset": "seg-folder", "root": str(t / "data"), "crop_size": SIZE, "scale": [1.0, 1.0]},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1},
        "eval": {"batch_size": 2},
    }
    (t / "sup.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(INTERVAL_ENV, "0")
        mp.delenv("RANK", raising=False)
        mp.setattr(allocator, "_opted_in", False)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert main(["train", str(t / "sup.yaml")]) == 0, err.getvalue()[-3000:]
    assert json.loads(out.getvalue())["steps"] == 2
    return t, err.getvalue()


def test_train_shows_its_steps_with_the_same_policy(runs):
    _, err = runs
    steps = _status(err, "train")
    assert [(n, total) for n, total, _ in steps] == [(1, 2), (2, 2)]
    assert "loss " in steps[0][2] and "eta " in steps[0][2] and "done in" in steps[-1][2]


def test_eval_shows_its_images_and_prints_the_same_json(runs, capsys):
    t, _ = runs
    assert main(["eval", str(t / "runs/segrun"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is the JSON only
    assert result["run_dir"] == str(t / "runs/segrun") and "miou" in result["metrics"]
    shown = _status(captured.err, "eval")
    assert [(n, total) for n, total, _ in shown] == [(2, 4), (4, 4)]  # eval.batch_size 2, four images
    assert "images/s, eta " in shown[0][2] and "done in" in shown[1][2]


def test_predict_shows_its_images_and_prints_the_same_summary(runs, capsys, tmp_path):
    t, _ = runs
    assert main(["predict", str(t / "runs/segrun"), str(t / "photos"), "--out", str(tmp_path / "p")]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"wrote 4 files to {(tmp_path / 'p').resolve()}\n"
    assert [(n, total) for n, total, _ in _status(captured.err, "predict")] == [(1, 2), (2, 2)]


def test_report_and_data_check_show_their_images(runs, capsys):
    t, _ = runs
    assert main(["report", str(t / "runs/segrun"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"report written to {t / 'runs/segrun/report.md'}\n"
    assert _status(captured.err, "report figure")[-1][:2] == (4, 4)
    assert main(["data", "check", "seg-folder", str(t / "data")]) == 0
    captured = capsys.readouterr()
    counts = dict(line.strip().rsplit(None, 1) for line in captured.out.splitlines()[1:])
    assert captured.out.splitlines()[0].endswith(": OK") and counts["images decoded"] == "4"  # the report only
    assert [n for n, total, _ in _status(captured.err, "decoding images") if total == 4] == [1, 2, 3, 4]


def test_nothing_is_shown_when_switched_off(runs, capsys, monkeypatch):
    t, _ = runs
    monkeypatch.setenv(SWITCH_ENV, "0")
    assert main(["eval", str(t / "runs/segrun"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert _status(captured.err, "eval") == [] and "miou" in json.loads(captured.out)["metrics"]


@pytest.fixture(scope="module")
def fewshot_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few-shot run directory (config.yaml + untrained weights): 3 test episodes of 5-way 1-shot, both feature
    types; and a support folder of two classes with two images each, and three query images."""
    folder = tmp_path_factory.mktemp("fewshot")
    config = config_from_dict(
        {
            "method": "scl",
            "model": {"backbone": "conv4"},
            "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
            "eval": {"shots": [1], "queries": 2, "episodes": 3, "features": "both"},
        }
    )
    write_yaml(config, folder / "config.yaml")
    torch.manual_seed(0)
    save_model(get_method("scl")(config).build_model(), str(folder / "model.safetensors"))
    rng = np.random.default_rng(1)
    for name in ("support/a/1.png", "support/a/2.png", "support/b/1.png", "support/b/2.png", "q/1.png", "q/2.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / name)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / "q/3.png")
    return folder


def test_fewshot_eval_shows_its_images_and_episodes(fewshot_run, capsys, tmp_path):
    out = tmp_path / "result.json"
    assert main(["fewshot-eval", str(fewshot_run), "--device", "cpu", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("5-way 1-shot: ") and captured.out.endswith(f"wrote {out}\n")
    assert json.loads(out.read_text())["episodes"] == 3
    images = len(get_method("scl")(load_config(str(fewshot_run / "config.yaml"))).split("test"))
    features = _status(captured.err, "eval test features")
    assert features[-1][:2] == (images, images) and all(total == images for _, total, _ in features)
    assert _status(captured.err, "eval test episodes")[-1][:2] == (6, 6)  # 3 episodes x 2 feature types


def test_fewshot_predict_shows_its_support_and_queries(fewshot_run, capsys, tmp_path):
    args = ["predict", str(fewshot_run), str(fewshot_run / "q"), "--support", str(fewshot_run / "support")]
    assert main([*args, "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "2-way support (a: 2, b: 2)"
    assert captured.out.splitlines()[1].startswith("3 queries predicted as ")
    assert _status(captured.err, "predict support")[-1][:2] == (4, 4)
    assert [n for n, total, _ in _status(captured.err, "predict queries") if total == 3] == [3]  # one batch
