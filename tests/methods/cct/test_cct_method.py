"""The CCT method: configuration checks, the composed loss of one step, parameter groups, evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fewlabels.config import ConfigError, build_config
from fewlabels.engine.data import collate
from fewlabels.methods.cct import CCTConfig, CCTMethod, consistency_weight
from fewlabels.methods.cct.model import CCTModel
from fewlabels.registry import config_from_dict, get_method

TINY = {
    "data": {"scenes_train": 8, "scenes_val": 2, "scenes_size": 32, "crop_size": 32, "labeled": 0.5},
    "train": {"batch_size": 2, "steps": 10},
    "perturbations": {
        "vat": 1,
        "dropout": 1,
        "cutout": 1,
        "context_mask": 1,
        "object_mask": 1,
        "feature_drop": 1,
        "feature_noise": 1,
    },
}


def test_cct_is_registered_with_the_spec_defaults() -> None:
    assert get_method("cct") is CCTMethod
    cfg = CCTConfig()
    assert cfg.perturbations.total == 30
    assert cfg.perturbations.counts == {
        "vat": 2,
        "dropout": 6,
        "cutout": 6,
        "context_mask": 2,
        "object_mask": 2,
        "feature_drop": 6,
        "feature_noise": 6,
    }
    assert (cfg.loss.unsupervised, cfg.loss.unsup_weight, cfg.loss.rampup, cfg.weak.weight) == (
        "mse",
        30.0,
        0.1,
        0.4,
    )


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"perturbations": {"dropuot": 3}}, "perturbations.dropuot"),
        ({"loss": {"unsupervised": "l1"}}, "loss.unsupervised"),
        ({"loss": {"unsupervised": "js", "conf_threshold": 0.5}}, "loss.conf_threshold"),
        ({"perturbations": dict.fromkeys(CCTConfig().perturbations.counts, 0)}, "perturbations"),
        ({"perturbations": {"feature_drop_gamma": [0.9, 0.7]}}, "perturbations.feature_drop_gamma"),
        ({"data": {"crop_size": 100}}, "data.crop_size"),
    ],
)
def test_invalid_configs_fail_naming_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(CCTConfig, data)
    assert err.value.key == key


def test_weak_weight_is_point_four_of_the_ramped_unsupervised_weight() -> None:
    method = CCTMethod(build_config(CCTConfig, {}))
    for step in (0, 37, 100, 500):
        w_u, w_w = method.weights(step, 1000)
        assert w_u == pytest.approx(consistency_weight(step, 100, 30.0))
        assert w_w == pytest.approx(0.4 * w_u / 30.0)


def test_one_step_combines_supervised_and_weighted_consistency_losses() -> None:
    torch.manual_seed(0)
    method = CCTMethod(build_config(CCTConfig, TINY))
    sources = method.train_sources()
    assert set(sources) == {"labeled", "unlabeled"}
    assert "mask" not in sources["unlabeled"].dataset.sample(0, np.random.default_rng(0))
    batch = {k: collate([s.dataset.sample(i, np.random.default_rng(i)) for i in range(2)]) for k, s in sources.items()}
    model = method.build_model()
    out = method.training_step(model, batch, step=3, total_steps=10)
    w_u = consistency_weight(3, 1, 30.0)
    torch.testing.assert_close(out.logs["loss_sup"] + w_u * out.logs["loss_unsup"], out.loss.detach())
    logits = model(batch["labeled"]["image"], mode="predict")
    torch.testing.assert_close(out.logs["loss_sup"], F.cross_entropy(logits, batch["labeled"]["mask"]))
    out.loss.backward()
    groups = method.param_groups(model)
    assert groups[0]["lr_scale"] == 1.0  # an encoder trained from scratch learns at the decoder's rate
    assert isinstance(model, CCTModel)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.net.encoder.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    model.eval()
    metrics = method.evaluate(model, torch.device("cpu"))
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["pixel_accuracy"] <= 1.0


@pytest.mark.parametrize("target", ["aux", "main"])
def test_weak_labels_mode_adds_the_weighted_cross_entropy(tmp_path: Path, target: str) -> None:
    from fewlabels.data.scenes import ScenesDataset

    scenes = ScenesDataset("train", n=8, size=32)
    for i in range(8):  # pseudo-labels named by scene index, as `fewlabels cct-pseudo-labels` writes them
        Image.fromarray(scenes.masks[i].astype(np.uint8)).save(tmp_path / f"{i:06d}.png")
    torch.manual_seed(0)
    method = CCTMethod(build_config(CCTConfig, {**TINY, "weak": {"labels_dir": str(tmp_path), "target": target}}))
    sources = method.train_sources()
    batch = {k: collate([s.dataset.sample(i, np.random.default_rng(i)) for i in range(2)]) for k, s in sources.items()}
    assert batch["unlabeled"]["mask"].shape == (2, 32, 32)
    model = method.build_model()
    out = method.training_step(model, batch, step=3, total_steps=10)
    w_u, w_w = method.weights(3, 10)
    expected = out.logs["loss_sup"] + w_u * out.logs["loss_unsup"] + w_w * out.logs["loss_weak"]
    torch.testing.assert_close(out.loss.detach(), expected)
    assert out.logs["loss_weak"] > 0
    if target == "main":  # the main decoder's CE on the unlabeled images against their pseudo-labels
        with torch.no_grad():
            logits = model.net(batch["unlabeled"]["image"])
        mine = F.cross_entropy(logits, batch["unlabeled"]["mask"].long(), ignore_index=255)
        torch.testing.assert_close(out.logs["loss_weak"], mine, rtol=1e-4, atol=1e-5)


def test_the_confidence_threshold_reaches_the_training_step() -> None:
    """``loss.conf_threshold`` (the digit-mosaics config's default) masks the consistency loss of a real step: a
    threshold of 0 keeps every pixel (the loss of no threshold, a mean over all elements), one above every target
    probability keeps none (exactly 0)."""
    sources = CCTMethod(build_config(CCTConfig, TINY)).train_sources()
    batch = {k: collate([s.dataset.sample(i, np.random.default_rng(i)) for i in range(2)]) for k, s in sources.items()}

    def loss_u(threshold: float | None) -> Tensor:
        method = CCTMethod(build_config(CCTConfig, {**TINY, "loss": {"conf_threshold": threshold}}))
        torch.manual_seed(0)  # the same weights and perturbations for every threshold
        model = method.build_model()
        return method.training_step(model, batch, step=3, total_steps=10).logs["loss_unsup"]

    unmasked = loss_u(None)
    assert unmasked > 0
    torch.testing.assert_close(loss_u(0.0), unmasked)
    assert loss_u(1.0 - 1e-7).item() == 0.0


@pytest.mark.parametrize("name", ["scenes", "digit_mosaics", "voc_1464", "cityscapes"])
def test_shipped_configs_validate(name: str) -> None:
    from fewlabels.registry import load_config

    path = Path(__file__).resolve().parents[3] / "configs" / "cct" / f"{name}.yaml"
    cpu = name in ("scenes", "digit_mosaics")
    cfg = load_config(str(path), [] if cpu else ["data.root=/data"])
    assert isinstance(cfg, CCTConfig)
    if cpu:  # the CPU configs: one aux decoder per perturbation type (its aux decoders dominate a step)
        assert set(cfg.perturbations.counts.values()) == {1} and cfg.perturbations.total == 7
        # digit-mosaics' dev choice (session 18); scenes keeps its measured recipe without a threshold
        assert cfg.loss.conf_threshold == (0.9 if name == "digit_mosaics" else None)
    else:  # the benchmark configs: the reference's K = 30
        assert cfg.perturbations.total == 30
    if name == "voc_1464":
        assert (cfg.model.encoder, cfg.model.deep_stem, cfg.model.psp, cfg.data.crop_size) == (
            "resnet50",
            True,
            True,
            320,
        )
        assert (cfg.train.batch_size, cfg.unlabeled_batch_size, cfg.train.epochs, cfg.train.lr) == (
            10,
            10,
            80,
            0.01,
        )


def test_unlabeled_images_are_nested_draws_of_the_unlabeled_split_and_leave_the_labels_alone() -> None:
    tiny = {**TINY, "data": {**TINY["data"], "scenes_train": 20, "labeled": 4}}  # 4 labeled + 16 unlabeled scenes

    def split(count: int) -> tuple[list[int], list[int]]:
        """(labeled, unlabeled) scene indices of a run with ``unlabeled_images: count``."""
        data = CCTMethod(build_config(CCTConfig, {**tiny, "unlabeled_images": count})).data
        unlabeled = data.unlabeled
        if count:  # a draw from the unlabeled split: indices into it
            unlabeled = unlabeled.dataset
            return data.labeled.indices, [unlabeled.indices[i] for i in data.unlabeled.indices]
        return data.labeled.indices, unlabeled.indices

    labeled, every = split(0)
    assert len(labeled) == 4 and len(every) == 16 and not set(labeled) & set(every)
    curve = {count: split(count) for count in (3, 8, 16)}
    for count, (lab, unl) in curve.items():
        assert lab == labeled and len(set(unl)) == count
    assert set(curve[3][1]) < set(curve[8][1]) < set(curve[16][1]) == set(every)
    with pytest.raises(ConfigError, match="unlabeled_images"):
        split(17)
    assert CCTConfig().unlabeled_images == 0


def test_encoder_lr_scale_is_gentle_for_pretrained_weights_only_and_explicit_values_win() -> None:
    from fewlabels.methods.segmentation.config import SegModelConfig

    assert SegModelConfig().encoder_lr_scale == 1.0  # from scratch: the encoder learns at train.lr
    assert SegModelConfig(pretrained="/weights/resnet50.pth").encoder_lr_scale == 0.1  # the reference's fine-tuning
    assert SegModelConfig(pretrained="/w.pth", backbone_lr_scale=0.5).encoder_lr_scale == 0.5
    assert SegModelConfig(backbone_lr_scale=0.1).encoder_lr_scale == 0.1
    for name in ("supervised", "cct"):
        method = get_method(name)(config_from_dict({"method": name, "model": {"backbone_lr_scale": 0.25}}))
        assert [g.get("lr_scale", 1.0) for g in method.param_groups(method.build_model())] == [0.25, 1.0]
    with pytest.raises(ConfigError) as err:
        build_config(CCTConfig, {"model": {"backbone_lr_scale": -1}})
    assert err.value.key == "model.backbone_lr_scale"
