"""Weak labels: CAM thresholding (with and without refinement), multi-scale CAMs, the CAM classifier's training crops,
the ``cct-cam`` method in the engine (exact resume), pseudo-label files read back with joint augmentation."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.data.base import DataError
from fewlabels.data.scenes import ScenesDataset
from fewlabels.data.transforms import SegAugment
from fewlabels.methods.cct.crf import CRFSettings
from fewlabels.methods.cct.weak import (
    CAMClassifier,
    CAMImages,
    PseudoLabeledImages,
    background_class,
    cams_to_pseudo_label,
    image_id_and_side,
    image_labels_from_mask,
    multiscale_cams,
    read_image_labels,
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


def test_refinement_sees_both_thresholded_maps_and_an_identity_refinement_changes_nothing() -> None:
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(5, 6, 7, generator=g)
    cams[:, 0, :3] = torch.tensor([0.30, 0.05, 0.0]).view(3, 1)[:, 0]  # exact ties go to the background
    present = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    seen: list[tuple[torch.Tensor, int]] = []

    def identity(labels: torch.Tensor, n: int) -> torch.Tensor:
        seen.append((labels.clone(), n))
        return labels

    plain = cams_to_pseudo_label(cams, present, background_index=0)
    assert torch.equal(cams_to_pseudo_label(cams, present, background_index=0, refine=identity), plain)
    # one call with both maps over [background, class 2, class 3]: argmax of [threshold, cam_2, cam_3]
    assert [(tuple(maps.shape), n) for maps, n in seen] == [((2, 6, 7), 3)]
    best = cams[[2, 3]].max(0)
    assert torch.equal(seen[0][0][0] == 0, best.values <= 0.30)
    assert torch.equal(seen[0][0][1] == 0, best.values <= 0.05)
    # by hand: the best present class above 0.30, background when all are at most 0.05, 255 between
    expected = torch.where(best.values > 0.30, torch.tensor([2, 3])[best.indices], torch.tensor(255))
    expected[best.values <= 0.05] = 0
    assert torch.equal(plain, expected)
    # a refinement that calls everything background gives background everywhere
    everything_background = cams_to_pseudo_label(cams, present, refine=lambda labels, n: torch.zeros_like(labels))
    assert (everything_background == 0).all()


def test_background_class_choice() -> None:
    assert background_class([4], 6, [1, 2]) == 4
    assert background_class([], 6, [0, 1, 3]) == 2
    assert background_class([], 3, [0, 1, 2]) == 0


def test_flipped_multiscale_cams_are_flip_equivariant() -> None:
    torch.manual_seed(0)
    model = CAMClassifier("small_cnn", 3, output_stride=8).eval()
    image = torch.rand(3, 32, 40)
    a = multiscale_cams(model, image, (1.0, 0.5), flip=True)
    b = multiscale_cams(model, image.flip(-1), (1.0, 0.5), flip=True)
    torch.testing.assert_close(b, a.flip(-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(multiscale_cams(model, image, (1.0,)), a, atol=1e-3)


class _Pixels(ScenesDataset):
    """Two images with known pixels: 2 x 3 and 5 x 6."""

    def __init__(self) -> None:
        self.shapes = [(2, 3), (5, 6)]

    def __len__(self) -> int:
        return 2

    def sample(self, index, rng):
        h, w = self.shapes[index]
        image = torch.arange(3 * h * w, dtype=torch.float32).view(3, h, w) / 100
        return {"image": image, "index": index}


class _Draws:
    """A stand-in generator returning given uniforms in order."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_cam_training_crops_pad_crop_and_flip_by_hand() -> None:
    labels = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    data = CAMImages(_Pixels(), labels, crop=4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    small = data.sample(0, _Draws([0.99, 0.0, 0.9]))  # 2 x 3 image: placed at row 2 (of 0..2), column 0, no flip
    image = _Pixels().sample(0, None)["image"]
    assert small["image"].shape == (3, 4, 4) and torch.equal(small["labels"], labels[0])
    torch.testing.assert_close(small["image"][:, 2:4, 0:3], image)
    torch.testing.assert_close(small["image"][:, :2, :], mean.expand(3, 2, 4))
    torch.testing.assert_close(small["image"][:, :, 3], mean[:, :, 0].expand(3, 4))
    big = data.sample(1, _Draws([0.5, 0.7, 0.1]))  # 5 x 6 image: rows 1..4, columns 2..5, then flipped
    image = _Pixels().sample(1, None)["image"]
    torch.testing.assert_close(big["image"], image[:, 1:5, 2:6].flip(-1))
    centred = data.sample(1, None)
    torch.testing.assert_close(centred["image"], image[:, 1:5, 1:5])


def test_image_ids_and_sides_come_without_decoding() -> None:
    from fewlabels.data.base import Subset

    scenes = Subset(ScenesDataset("train", n=6, size=24, labeled=False), [4, 1])
    assert [image_id_and_side(scenes, i) for i in range(2)] == [("000004", 24), ("000001", 24)]
    assert [scenes.sample(i, None)["index"] for i in range(2)] == [4, 1]


def test_pseudo_labels_with_and_without_crf_are_valid(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = ScenesDataset("train", n=4, size=32, transform=SegAugment(32, (1.0, 1.0)))
    labels = [image_labels_from_mask(torch.from_numpy(data.masks[i]).long(), 6) for i in range(4)]
    model = CAMClassifier("small_cnn", 6, output_stride=8)
    for name, crf in (("plain", None), ("crf", CRFSettings(iterations=2))):
        paths = write_pseudo_labels(model, data, labels, tmp_path / name, scales=(1.0, 0.5), crf=crf)
        assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(4)]
        for p, present in zip(paths, labels):
            values = set(np.unique(np.asarray(Image.open(p))).tolist())
            allowed = {0, 255} | {int(c) for c in present.nonzero().flatten()}
            assert values <= allowed
    with pytest.raises(DataError, match="3 image-level labels for 4 images"):
        write_pseudo_labels(model, data, labels[:3], tmp_path / "x")


def test_the_cam_classifier_follows_the_configs_encoder_stem_and_weights(tmp_path) -> None:
    """VOC configs use a deep-stem ResNet: the CAM classifier must be that network, with those weights loaded."""
    import warnings

    from fewlabels.config import build_config
    from fewlabels.methods.cct import CCTConfig
    from fewlabels.methods.cct.cam import CCTCAMMethod, cam_config_from_cct
    from fewlabels.models import build_encoder

    torch.manual_seed(0)
    source = build_encoder("resnet18", 16, deep_stem=True)
    weights = tmp_path / "deep_stem_resnet18.pth"
    torch.save(source.state_dict(), weights)
    cfg = build_config(
        CCTConfig,
        {
            "model": {"encoder": "resnet18", "deep_stem": True, "pretrained": str(weights), "output_stride": 8},
            "data": {"scenes_train": 4, "scenes_val": 2, "scenes_size": 32, "crop_size": 32},
            "perturbations": {"background_classes": [2]},
            "seed": 7,
        },
    )
    cam_cfg = cam_config_from_cct(cfg, "labels.json", values={"train": {"steps": 3, "epochs": 0.0}})
    assert (cam_cfg.seed, cam_cfg.cam.background_class, cam_cfg.cam.image_labels) == (7, 2, "labels.json")
    assert (cam_cfg.train.steps, cam_cfg.train.epochs, cam_cfg.train.lr, cam_cfg.train.batch_size) == (3, 0, 0.1, 16)
    assert cam_cfg.data == cfg.data
    model = CCTCAMMethod(cam_cfg).build_model()
    assert model.encoder.deep_stem and not isinstance(model.encoder.state_dict().get("conv1.weight"), torch.Tensor)
    own = model.encoder.state_dict()
    assert own.keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(own[key], value)
    assert model.classifier.out_channels == 6  # the scenes classes
    # Another encoder starts from scratch, with a warning (the config's weights are not its own).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = cam_config_from_cct(cfg, "labels.json", encoder="small_cnn")
    assert any("is not loaded" in str(w.message) for w in caught)
    assert (other.model.encoder, other.model.pretrained, other.model.deep_stem) == ("small_cnn", None, False)


def test_the_cam_method_defaults_are_the_reference_recipe() -> None:
    from fewlabels.registry import config_from_dict

    cfg = config_from_dict({"method": "cct-cam"})
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.epochs, t.batch_size, t.scheduler) == (
        "sgd",
        0.1,
        0.9,
        1e-4,
        5.0,
        16,
        "poly",
    )
    assert (cfg.model.encoder, cfg.model.output_stride, cfg.model.classifier_lr_scale) == ("resnet50", 16, 10.0)
    assert (cfg.cam.crop_size, cfg.cam.scales, cfg.cam.fg_threshold, cfg.cam.bg_threshold) == (
        512,
        [1.0, 0.5, 1.5, 2.0],
        0.30,
        0.05,
    )
    assert (cfg.crf.enabled, cfg.crf.iterations, cfg.crf.gaussian_sxy, cfg.crf.bilateral_sxy) == (True, 10, 3.0, 50.0)


def _cam_run(tmp_path: Path, name: str, steps: int = 4) -> dict:
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({f"{i:06d}": [1, i % 3 + 2] for i in range(8)}))
    return {
        "method": "cct-cam",
        "name": name,
        "output_dir": str(tmp_path),
        "seed": 3,
        "model": {"encoder": "small_cnn", "output_stride": 8},
        "data": {"scenes_train": 8, "scenes_val": 2, "scenes_size": 32, "labeled": 2},
        "cam": {"image_labels": str(labels), "crop_size": 24},
        "train": {"steps": steps, "epochs": 0.0, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, "lr": 0.05},
    }


def test_a_cam_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path: Path, monkeypatch) -> None:
    from safetensors.torch import load_file

    from fewlabels.engine import TrainingInterrupted, train
    from fewlabels.engine.checkpoint import list_checkpoints
    from fewlabels.methods.cct.cam import CCTCAMMethod
    from fewlabels.registry import config_from_dict

    ref = train(config_from_dict(_cam_run(tmp_path, "ref")))
    assert ref.steps == 4
    # the crops are 24 px (cam.crop_size), at most the 32 px images; 6 unlabeled images
    method = CCTCAMMethod(config_from_dict(_cam_run(tmp_path, "x")))
    assert method.crop_size() == 24 and len(method.train_sources()["images"].dataset) == 6
    method.config.cam.crop_size = 512
    assert method.crop_size() == 32

    config = config_from_dict(_cam_run(tmp_path, "run"))
    original = CCTCAMMethod.training_step

    def training_step(self, model, batch, step, total_steps):
        out = original(self, model, batch, step, total_steps)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(CCTCAMMethod, "training_step", training_step)
    with pytest.raises(TrainingInterrupted, match="after step 3/4"):
        train(config)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")][-1] == "step_00000003.pt"
    monkeypatch.setattr(CCTCAMMethod, "training_step", original)
    resumed = train(config, tmp_path / "run")
    a, b = load_file(str(ref.run_dir / "model.safetensors")), load_file(str(resumed.run_dir / "model.safetensors"))
    assert a.keys() == b.keys() and "classifier.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # it trained: the classifier moved from its initial weights
    first = CCTCAMMethod(config).build_model().state_dict()
    assert not torch.equal(first["classifier.weight"], a["classifier.weight"])


def test_the_cam_run_refuses_a_missing_label_file(tmp_path: Path) -> None:
    from fewlabels.methods.cct.cam import CCTCAMMethod
    from fewlabels.registry import config_from_dict

    cfg = _cam_run(tmp_path, "r")
    cfg["cam"]["image_labels"] = ""
    with pytest.raises(DataError, match="cam.image_labels"):
        CCTCAMMethod(config_from_dict(cfg)).train_sources()
