"""``digits``: scikit-learn's bundled handwritten digits as an evaluation-only few-shot dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_model
from sklearn.datasets import load_digits

from fewlabels.cli import main
from fewlabels.config import write_yaml
from fewlabels.data.base import DataError
from fewlabels.data.common import CheckReport
from fewlabels.data.digits import DIGITS
from fewlabels.data.registry import dataset_names, load_fewshot
from fewlabels.engine import load_run
from fewlabels.methods.scl.fewshot_eval import fewshot_evaluate
from fewlabels.registry import config_from_dict, get_method


def test_the_test_split_holds_all_1797_digits_in_ten_classes() -> None:
    assert "digits" in dataset_names("few-shot")
    ds = load_fewshot("digits", split="test", image_size=32)
    raw = load_digits()
    assert len(ds) == 1797 and ds.num_classes == 10
    assert ds.class_names == [str(d) for d in range(10)]
    np.testing.assert_array_equal(ds.labels, raw.target)
    counts = np.bincount(ds.labels)
    assert counts.sum() == 1797 and counts.min() >= 20  # every class has enough images for 5-shot, 15-query episodes
    assert load_fewshot("digits", split="novel", image_size=32).labels.tolist() == ds.labels.tolist()


def test_images_are_the_raw_values_scaled_to_0_1_and_upsampled_to_the_run_size() -> None:
    raw = load_digits().images
    native = load_fewshot("digits", split="test", image_size=8)
    for i in (0, 1, 500, 1796):
        s = native[i]
        assert s["image"].shape == (3, 8, 8) and s["image"].dtype == torch.float32
        assert int(s["label"]) == int(load_digits().target[i])
        # the three channels are the same grey image, equal to value / 16 up to the uint8 rounding
        assert torch.equal(s["image"][0], s["image"][1]) and torch.equal(s["image"][0], s["image"][2])
        np.testing.assert_allclose(s["image"][0].numpy(), raw[i] / 16.0, atol=0.5 / 255 + 1e-6)
    big = load_fewshot("digits", split="test", image_size=32)
    images = torch.stack([big[i]["image"] for i in range(0, 1797, 37)])
    assert images.shape == (49, 3, 32, 32)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # ink is bright on a dark background, as in glyphs: the border is darker than the centre
    assert float(images[:, :, :4, :].mean()) < float(images[:, :, 12:20, 12:20].mean())
    # bilinear upsampling keeps each image's range within the 8 x 8 original's
    for j, i in enumerate(range(0, 1797, 37)):
        small = native[i]["image"]
        assert float(images[j].max()) <= float(small.max()) + 1e-6
        assert float(images[j].min()) >= float(small.min()) - 1e-6


def test_train_and_val_splits_do_not_exist() -> None:
    for split in ("train", "base", "val"):
        with pytest.raises(DataError, match="evaluation-only"):
            load_fewshot("digits", split=split, image_size=32)


def test_data_check_counts_the_test_classes() -> None:
    report = CheckReport("digits", "")
    DIGITS.check(Path("."), report)
    assert report.ok
    assert report.counts["test classes"] == 10 and report.counts["test images"] == 1797


def test_fewshot_eval_of_a_glyphs_run_on_digits(tmp_path: Path) -> None:
    """A (tiny, untrained) glyphs run evaluated on digits with ``data.dataset=digits``: the command scores the
    digits episodes (the same numbers as evaluating the model on the digits split directly)."""
    config = config_from_dict(
        {
            "method": "scl",
            "model": {"backbone": "conv4"},
            "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
            "eval": {"shots": [1, 5], "queries": 15, "episodes": 6, "support_augment": 0},
        }
    )
    write_yaml(config, tmp_path / "config.yaml")
    torch.manual_seed(0)
    save_model(get_method("scl")(config).build_model(), str(tmp_path / "model.safetensors"))
    out = tmp_path / "digits.json"
    assert main(["fewshot-eval", str(tmp_path), "data.dataset=digits", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["episodes"] == 6 and result["ways"] == 5
    for k in (1, 5):
        assert 0.0 <= result[f"acc_{k}shot"] <= 100.0
    run = load_run(tmp_path, device="cpu", overrides=["data.dataset=digits"])
    direct = fewshot_evaluate(run.model, load_fewshot("digits", split="test", image_size=32), run.method.config.eval)
    assert result["acc_1shot"] == pytest.approx(direct["acc_1shot"])
    assert result["acc_5shot"] == pytest.approx(direct["acc_5shot"])
