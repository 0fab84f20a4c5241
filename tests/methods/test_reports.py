"""`fewlabels report` builds curves, metrics and the method's qualitative figures for a run of any method."""

from __future__ import annotations

import yaml
from PIL import Image

from fewlabels.cli import main


def test_report_of_a_few_shot_run_has_episode_histograms(tmp_path):
    cfg = {
        "method": "scl",
        "name": "r",
        "output_dir": str(tmp_path),
        "model": {"backbone": "conv4"},
        "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
        "eval": {"shots": [1], "queries": 2, "val_episodes": 5},
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "log_every": 1},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    assert main(["report", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "episodes_1shot.png" in text and "curves.png" in text and "acc_1shot" in text
    assert Image.open(tmp_path / "r" / "report" / "episodes_1shot.png").size[0] > 100
