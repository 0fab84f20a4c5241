"""Weak labels: CAM thresholding, multi-scale CAMs, pseudo-label files read back with joint augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.data.base import DataError
from fewlabels.data.scenes import ScenesDataset
from fewlabels.data.transforms import SegAugment
from fewlabels.methods.cct.weak import (
    CAMClassifier,
    PseudoLabeledImages,
    cams_to_pseudo_label,
    image_labels_from_mask,
    multiscale_cams,
    read_image_labels,
    train_cam_classifier,
    write_pseudo_labels,
)


def test_cam_thresholds_give_foreground_background_and_ignore() -> None:
    cams = torch.zeros(4, 1, 5)
    cams[2, 0] = torch.tensor([0.9, 0.31, 0.2, 0.04, 0.0])
    cams[3, 0] = torch.tensor([0.5, 0.0, 0.0, 0.0, 0.95])  # class 3 is absent from the image: never chosen
    cams[0, 0] = 1.0  # the background class's own CAM does not compete
    present = torch.tensor([1.0, 0.0, 1.0, 0.0])
    label = cams_to_pseudo_label(cams, present, background_index=0)
    assert label[0].tolist() == [2, 2, 255, 0, 0]


def test_image_labels_and_json_labels() -> None:
    mask = torch.tensor([[0, 3], [255, 3]])
    assert image_labels_from_mask(mask, 5).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_read_image_labels_checks_ids_and_classes(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"a": [0, 2], "b": [1]}))
    assert [v.tolist() for v in read_image_labels(path, ["b", "a"], 3)] == [[0, 1, 0], [1, 0, 1]]
    with pytest.raises(DataError, match="no labels"):
        read_image_labels(path, ["c"], 3)
    with pytest.raises(DataError, match="outside"):
        read_image_labels(path, ["a"], 2)


def test_multiscale_cams_are_normalised_per_class() -> None:
    torch.manual_seed(0)
    model = CAMClassifier("small_cnn", 3, output_stride=8).eval()
    cams = multiscale_cams(model, torch.rand(3, 32, 40))
    assert cams.shape == (3, 32, 40)
    assert cams.min() >= 0
    peaks = cams.flatten(1).amax(1)
    assert ((peaks > 0.99) | (peaks == 0)).all()


def test_pseudo_labels_are_written_and_read_back_with_the_same_augmentation(tmp_path: Path) -> None:
    aug = SegAugment(24, (0.8, 1.2), hflip=True)
    labeled = ScenesDataset("train", n=4, size=32, transform=aug)
    images = ScenesDataset("train", n=4, size=32, labeled=False, transform=aug)
    # pseudo-labels = the true masks: then the paired stream must equal the labeled stream exactly
    for i in range(4):
        Image.fromarray(labeled.masks[i].astype(np.uint8)).save(tmp_path / f"{i:06d}.png")
    paired = PseudoLabeledImages(images, tmp_path)
    for i in range(4):
        a, b = paired.sample(i, np.random.default_rng(i)), labeled.sample(i, np.random.default_rng(i))
        torch.testing.assert_close(a["mask"], b["mask"])
        torch.testing.assert_close(a["image"], b["image"])
    (tmp_path / "000002.png").unlink()
    with pytest.raises(DataError, match="000002.png"):
        paired.sample(2, None)


def test_cam_classifier_trains_and_writes_valid_pseudo_labels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = ScenesDataset("train", n=4, size=32, transform=SegAugment(32, (1.0, 1.0)))
    labels = [image_labels_from_mask(torch.from_numpy(data.masks[i]).long(), 6) for i in range(4)]
    model = CAMClassifier("small_cnn", 6, output_stride=8)
    losses = train_cam_classifier(model, data, labels, steps=3, batch_size=2)
    assert len(losses) == 3 and all(np.isfinite(losses))
    paths = write_pseudo_labels(model, data, labels, tmp_path, scales=(1.0, 0.5))
    assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(4)]
    for p, present in zip(paths, labels):
        values = set(np.unique(np.asarray(Image.open(p))).tolist())
        allowed = {0, 255} | {int(c) for c in present.nonzero().flatten()}
        assert values <= allowed


def test_the_cam_classifier_follows_the_configs_encoder_stem_and_weights(tmp_path) -> None:
    """VOC configs use a deep-stem ResNet: the CAM classifier must be that network, with those weights loaded."""
    import warnings

    from fewlabels.config import build_config
    from fewlabels.methods.cct import CCTConfig
    from fewlabels.methods.cct.weak import CAMSettings, cam_classifier
    from fewlabels.models import build_encoder

    torch.manual_seed(0)
    source = build_encoder("resnet18", 16, deep_stem=True)
    weights = tmp_path / "deep_stem_resnet18.pth"
    torch.save(source.state_dict(), weights)
    cfg = build_config(
        CCTConfig, {"model": {"encoder": "resnet18", "deep_stem": True, "pretrained": str(weights), "output_stride": 8}}
    )
    model = cam_classifier(cfg, CAMSettings(), 21)
    assert model.encoder.deep_stem and not isinstance(model.encoder.state_dict().get("conv1.weight"), torch.Tensor)
    own = model.encoder.state_dict()
    assert own.keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(own[key], value)
    assert model.classifier.out_channels == 21
    # Another encoder starts from scratch, with a warning (the config's weights are not its own).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = cam_classifier(cfg, CAMSettings(encoder="small_cnn"), 21)
    assert any("is not loaded" in str(w.message) for w in caught)
    assert not getattr(other.encoder, "deep_stem", False)
