"""Defaults that do not depend on the dataset's class indices: the background classes of G-Cutout and the masking
perturbations come from the dataset's metadata (for a folder: the class ``classes.txt`` names ``background``),
never from a ``perturbations.background_classes`` the user must know to set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cct_method import TINY

from fewlabels.config import build_config
from fewlabels.methods.cct import CCTConfig, CCTMethod
from fewlabels.methods.cct.model import CCTModel


def _folder(root: Path, classes: list[str] | None, background: int) -> Path:
    """Six 32x32 images whose masks hold ``background`` around a square of each other class."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    if classes is not None:
        (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    others = [c for c in range(3) if c != background]
    for i in range(6):
        mask = np.full((32, 32), background, dtype=np.uint8)
        mask[4:14, 4:14] = others[0]
        mask[18:28, 18:28] = others[1]
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"m{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"m{i}.png")
    return root


@pytest.mark.parametrize(
    ("classes", "background"),
    [(["cell", "background", "nucleus"], 1), (["cell", "nucleus", "BG"], 2), (None, 0), (["bg_free", "a", "b"], 0)],
)
def test_a_folders_background_comes_from_its_class_names(
    tmp_path: Path, classes: list[str] | None, background: int
) -> None:
    root = _folder(tmp_path / "cells", classes, background)
    data = {"dataset": "seg-folder", "root": str(root), "crop_size": 32, "labeled": 1.0}
    method = CCTMethod(build_config(CCTConfig, {**TINY, "data": data}))
    assert method.config.perturbations.background_classes is None
    assert method.background_classes == [background]
    assert sorted(method.data.thing_classes) == [c for c in range(3) if c != background]
    torch.manual_seed(0)
    model = method.build_model()
    assert isinstance(model, CCTModel) and model.background_classes == (background,)
    # G-Cutout and the masking perturbations read it: a prediction of the background only has no foreground.
    z = torch.randn(1, model.net.feature_channels, 4, 4)
    target = torch.zeros(1, 3, 32, 32)
    target[:, background] = 1.0
    assert not model.perturbation_input(z, target).foreground.any()


def test_a_configured_background_still_wins(tmp_path: Path) -> None:
    root = _folder(tmp_path / "cells", ["cell", "background", "nucleus"], 1)
    data = {"dataset": "seg-folder", "root": str(root), "crop_size": 32, "labeled": 1.0}
    method = CCTMethod(build_config(CCTConfig, {**TINY, "data": data, "perturbations": {"background_classes": [0]}}))
    assert method.background_classes == [0]
