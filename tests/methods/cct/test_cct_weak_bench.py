"""benchmarks/cct_weak.py: the quality of pseudo-labels against true masks (by hand), and the command it runs per
seed (a new CAM run, or the one in the folder, resumed or reused)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmark_scripts import load_benchmark


def test_pseudo_label_quality_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    weak = load_benchmark("cct_weak", monkeypatch)
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
    pseudo = np.array([[0, 255, 1, 2], [1, 2, 255, 0]])
    q = weak.pseudo_label_quality([(pseudo, truth)], 4)
    # 7 true-labeled pixels, 5 of them pseudo-labeled: (0,0) (1,1) (1,2) right; (1,2)->2 wrong, (0,1)->1 wrong
    assert q["coverage"] == pytest.approx(5 / 7)
    assert q["accuracy"] == pytest.approx(3 / 5)
    # IoU over the covered pixels (true, pseudo): (0,0) (1,1) (1,2) (0,1) (2,2). class 0: 1 / (2 + 1 - 1);
    # class 1: 1 / (2 + 2 - 1); class 2: 1 / (1 + 2 - 1); class 3 occurs nowhere
    assert q["iou"] == [0.5, 0.3333, 0.5, None]
    assert math.isclose(q["miou"], (0.5 + 1 / 3 + 0.5) / 3)


def test_each_seed_runs_the_pseudo_label_command_on_its_split(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    weak = load_benchmark("cct_weak", monkeypatch)
    folder = tmp_path / "seed3"
    command = weak.pseudo_label_command(Path("c.yaml"), 0.02, 3, tmp_path / "l.json", folder, crf=False)
    assert command[2:5] == ["fewlabels", "cct-pseudo-labels", "c.yaml"]
    assert command[5:8] == ["data.labeled=0.02", "data.split_seed=3", "seed=3"]
    assert command[8:] == [
        "--image-labels",
        str(tmp_path / "l.json"),
        "--out",
        str(folder / "labels"),
        "--run",
        str(folder / "cam"),
        "--no-crf",
    ]
    (folder / "cam").mkdir(parents=True)  # stopped part-way: resumed
    assert weak.pseudo_label_command(Path("c.yaml"), 0.02, 3, tmp_path / "l.json", folder, crf=True)[-2:] == [
        "--resume",
        str(folder / "cam"),
    ]
    (folder / "cam" / "model.safetensors").write_bytes(b"")  # finished: reused
    assert weak.pseudo_label_command(Path("c.yaml"), 0.02, 3, tmp_path / "l.json", folder, crf=True)[-2:] == [
        "--from-run",
        str(folder / "cam"),
    ]
