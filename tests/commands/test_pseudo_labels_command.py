"""``fewlabels cct-pseudo-labels``: a CCT config and image-level labels in, one pseudo-label PNG per unlabeled image."""

from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image

from fewlabels.cli import main

SCENES = ["data.scenes_train=6", "data.scenes_val=2", "data.scenes_size=32", "data.crop_size=32", "data.labeled=0.5"]


def test_pseudo_labels_are_written_for_every_unlabeled_image(tmp_path, capsys):
    (tmp_path / "cct.yaml").write_text(yaml.safe_dump({"method": "cct", "output_dir": str(tmp_path / "runs")}))
    # every generated scene holds class 1 (the labels of labeled images are simply not read)
    (tmp_path / "labels.json").write_text(json.dumps({f"{i:06d}": [1] for i in range(6)}))
    out = tmp_path / "weak"
    args = ["--image-labels", str(tmp_path / "labels.json"), "--out", str(out), "--encoder", "small_cnn"]
    status = main(
        ["cct-pseudo-labels", str(tmp_path / "cct.yaml"), *SCENES, *args, "--steps", "2", "--batch-size", "2"]
    )
    assert status == 0
    written = sorted(out.glob("*.png"))
    assert len(written) == 3  # half of the 6 scenes are unlabeled
    for path in written:
        mask = np.asarray(Image.open(path))
        assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) <= {0, 1, 255}
    printed = capsys.readouterr().out
    assert "over 2 steps" in printed and f"wrote 3 pseudo-labels to {out}" in printed


def test_a_config_of_another_method_is_refused(tmp_path, capsys):
    (tmp_path / "sup.yaml").write_text(yaml.safe_dump({"method": "supervised"}))
    status = main(["cct-pseudo-labels", str(tmp_path / "sup.yaml"), "--image-labels", "x.json", "--out", "o"])
    assert status == 2
    assert "pseudo-labels are written for cct configs" in capsys.readouterr().err
