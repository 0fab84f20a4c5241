"""The supervised baseline through the whole CLI: train, eval, predict, report, resume refusal cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import subprocess_env
from fewlabels.cli import main


def tiny_config(tmp_path: Path) -> Path:
    cfg = {
        "method": "supervised",
        "name": "sup",
        "output_dir": str(tmp_path / "runs"),
        "data": {
            "dataset": "scenes",
            "labeled": 16,
            "scenes_train": 32,
            "scenes_val": 4,
            "scenes_size": 32,
            "crop_size": 32,
        },
        "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "eval_every": 2, "log_every": 1},
    }
    path = tmp_path / "sup.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sup")
    assert main(["train", str(tiny_config(tmp))]) == 0
    return tmp / "runs" / "sup"


def test_training_writes_a_complete_run_directory(trained):
    names = {p.name for p in trained.iterdir()}
    assert {
        "config.yaml",
        "metrics.jsonl",
        "model.safetensors",
        "best.safetensors",
        "best.json",
        "checkpoints",
        "tensorboard",
    } <= names
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4] and all(0 <= r["miou"] <= 1 for r in val)
    best = json.loads((trained / "best.json").read_text())
    assert best["miou"] == max(r["miou"] for r in val)


def test_eval_reads_the_run_back_and_reports_the_best_metrics(trained, capsys):
    assert main(["eval", str(trained)]) == 0
    out = json.loads(capsys.readouterr().out)
    best = json.loads((trained / "best.json").read_text())
    assert out["metrics"]["miou"] == pytest.approx(best["miou"], abs=1e-9)


def test_predict_writes_masks_and_overlays(trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            images / f"{i}.png"
        )
    assert main(["predict", str(trained), str(images), "--out", str(tmp_path / "masks")]) == 0
    mask = np.asarray(Image.open(tmp_path / "masks" / "0.png"))
    assert mask.shape == (40, 50) and mask.max() < 6
    assert (tmp_path / "masks" / "1_overlay.png").is_file()


def test_predict_refuses_an_output_inside_the_input_and_an_empty_folder(trained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(trained), str(empty), "--out", str(empty / "out")]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert main(["predict", str(trained), str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_report_has_curves_metrics_and_predictions(trained):
    assert main(["report", str(trained)]) == 0
    text = (trained / "report.md").read_text()
    assert "miou" in text and "curves.png" in text and "predictions.png" in text
    assert Image.open(trained / "report" / "predictions.png").size[0] > 100


def test_resume_refuses_another_method_and_trajectory_changes(trained, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"method": "toy"}))
    assert main(["train", str(other), "--resume", str(trained)]) == 2
    assert "is a 'supervised' run" in capsys.readouterr().err
    assert main(["train", "--resume", str(trained), "train.lr=0.5"]) == 2
    assert "cannot be changed when resuming" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_methods_lists_the_registry_and_module_entry_point_works():
    res = subprocess.run(
        [sys.executable, "-m", "fewlabels", "methods"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert res.returncode == 0 and "supervised" in res.stdout
