"""Multi-domain CCT as in the paper, and UDA: domains with their own label spaces (a main decoder and K aux decoders
per domain over the shared encoder), a label-free domain trained only through the consistency loss and evaluated
on its own validation split, and the batch composition when a source has fewer images than a batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from PIL import Image
from test_cct_method import TINY

from fewlabels.config import build_config
from fewlabels.data.base import Repeated, fill_batch
from fewlabels.data.scenes import SCENE_CLASSES, generate_scenes
from fewlabels.engine.data import collate
from fewlabels.methods.cct import CCTConfig, CCTMethod
from fewlabels.methods.cct.model import CCTModel
from fewlabels.registry import load_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "cct"
TINY_DATA = cast(dict[str, Any], TINY["data"])
SIZE = 32
# Domain 1's label space: scenes' stuff classes merged into "ground", the disc, and the other shapes.
COARSE = np.array([0, 0, 0, 1, 2, 2], dtype=np.uint8)


def _coarse_scenes_folder(root: Path, n: int = 6, labeled: int = 3) -> Path:
    """Another domain with another label space: 3 classes (ground / disc / shape), colours inverted."""
    arrays = generate_scenes(n, SIZE, seed=5)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("ground\ndisc\nshape\n")
    for i in range(n):
        Image.fromarray(255 - arrays["images"][i]).save(root / "images" / f"img{i}.png")
        if i < labeled:
            Image.fromarray(COARSE[arrays["masks"][i]]).save(root / "masks" / f"img{i}.png")
    return root


def _grads(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def _batch(method: CCTMethod, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        name: collate([src.dataset.sample(i, rng) for i in range(2)]) for name, src in method.train_sources().items()
    }


def _two_label_spaces(tmp_path: Path) -> CCTMethod:
    folder = _coarse_scenes_folder(tmp_path / "coarse")
    domain = {"dataset": "seg-folder", "root": str(folder), "crop_size": SIZE}
    return CCTMethod(build_config(CCTConfig, {**TINY, "domains": [domain]}))


def test_domains_with_other_classes_get_their_own_main_and_aux_decoders(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = _two_label_spaces(tmp_path)
    model = method.build_model()
    assert isinstance(model, CCTModel)
    assert model.domain_classes == [len(SCENE_CLASSES), 3] and model.main_decoder_of == [0, 1]
    assert model.aux_of(0).num_classes == len(SCENE_CLASSES) and model.aux_of(1).num_classes == 3
    assert model.aux_of(1).num_decoders == model.aux.num_decoders == method.config.perturbations.total
    # Background classes come from each dataset's metadata: scenes' stuff classes, the folder's class 0.
    assert method.domain_background(0) == [0, 1, 2] and method.domain_background(1) == [0]
    batch = _batch(method)
    out = method.training_step(model, batch, step=50, total_steps=100)
    assert torch.isfinite(out.loss) and float(out.logs["loss_unsup"]) > 0
    out.loss.backward()
    for part in (model.net.decoder, model.domain_decoders[0], model.aux, model.domain_aux[0], model.net.encoder):
        assert _grads(part) > 0
    # The labeled logits come per domain, each with its domain's classes.
    images = torch.cat([batch["labeled"]["image"], batch["labeled_1"]["image"]])
    logits = model(images, mode="train", domains_l=[2, 2])
    assert logits["logits_l_d0"].shape == (2, len(SCENE_CLASSES), SIZE, SIZE)
    assert logits["logits_l_d1"].shape == (2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="different classes"):
        model(images, mode="predict", domains_l=torch.tensor([0, 0, 1, 1]))
    # Evaluation and prediction of domain 1 use its 3 classes.
    metrics = method.evaluate(model.eval(), torch.device("cpu"))
    assert {"miou_d0", "miou_d1"} <= set(metrics) and "iou/disc_d1" in metrics
    with torch.no_grad():
        assert method.predictor(model, 1)(images[:1]).shape == (1, 3, SIZE, SIZE)


def test_each_domains_batch_trains_its_own_decoders_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = _two_label_spaces(tmp_path)
    model = method.build_model()
    assert isinstance(model, CCTModel)
    batch = _batch(method)
    # Only domain 1's images: its labeled and unlabeled batches, no domain-0 image.
    out = model(
        batch["labeled_1"]["image"], batch["unlabeled_1"]["image"], mode="train", domains_l=[0, 2], domains_u=[0, 2]
    )
    assert set(out) == {"logits_l_d1", "loss_u"}
    torch.nn.functional.cross_entropy(out["logits_l_d1"], batch["labeled_1"]["mask"], ignore_index=255).backward()
    assert _grads(model.domain_decoders[0]) > 0 and _grads(model.net.encoder) > 0
    assert _grads(model.net.decoder) == 0 and _grads(model.domain_aux[0]) == 0 and _grads(model.aux) == 0
    model.zero_grad(set_to_none=True)
    # Domain 1's unlabeled images train its aux decoders (and the encoder), never a main decoder.
    out["loss_u"].backward()
    assert _grads(model.domain_aux[0]) > 0 and _grads(model.net.encoder) > 0
    assert _grads(model.aux) == 0 and _grads(model.net.decoder) == 0 and _grads(model.domain_decoders[0]) == 0


def _uda_config(**extra: object) -> CCTConfig:
    target = {
        "dataset": "scenes-shift",
        "label_free": True,
        "scenes_train": 6,
        "scenes_val": 2,
        "scenes_size": SIZE,
        "crop_size": SIZE,
    }
    return build_config(CCTConfig, {**TINY, "domains": [target], "predict_domain": 1, **extra})


def test_a_label_free_domain_contributes_only_the_unsupervised_loss() -> None:
    torch.manual_seed(0)
    method = CCTMethod(_uda_config())
    sources = method.train_sources()
    assert sorted(sources) == ["labeled", "unlabeled", "unlabeled_1"]  # no labeled source for the target
    assert len(sources["unlabeled_1"].dataset) == 6  # every training image of the target is unlabeled
    model = method.build_model()
    assert isinstance(model, CCTModel)
    assert model.main_decoder_of == [0, 0] and isinstance(model.domain_decoders[0], torch.nn.Identity)
    assert not list(model.domain_decoders.parameters())  # no untrained main decoder
    batch = _batch(method)
    other = dict(batch, unlabeled_1=_batch(method, seed=1)["unlabeled_1"])
    torch.manual_seed(1)
    a = method.training_step(model, batch, step=50, total_steps=100)
    torch.manual_seed(1)
    b = method.training_step(model, other, step=50, total_steps=100)
    # The target's images change the unsupervised loss only.
    assert float(a.logs["loss_sup"]) == float(b.logs["loss_sup"])
    assert float(a.logs["loss_unsup"]) != float(b.logs["loss_unsup"])
    # Alone, the target's batch trains the encoder and its own aux decoders, through the consistency loss only.
    images_u = batch["unlabeled_1"]["image"]
    out = model(batch["labeled"]["image"][:0], images_u, mode="train", domains_l=[0, 0], domains_u=[0, 2])
    assert set(out) == {"loss_u"}
    out["loss_u"].backward()
    assert _grads(model.domain_aux[0]) > 0 and _grads(model.net.encoder) > 0
    assert _grads(model.net.decoder) == 0 and _grads(model.aux) == 0
    # Evaluated on its own val split, with the main decoder it shares (domain 0's).
    metrics = method.evaluate(model.eval(), torch.device("cpu"))
    assert {"miou_d0", "miou_d1"} <= set(metrics)
    x = method.further_domain_data[0].val[0]["image"].unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(method.predictor(model)(x), method.predictor(model, 0)(x))


def test_a_label_free_folder_needs_no_mask_but_its_val_split(tmp_path: Path) -> None:
    root = tmp_path / "target"
    arrays = generate_scenes(5, SIZE, seed=9)
    for sub in ("images", "val/images", "val/masks"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(arrays["images"][i]).save(root / "images" / f"t{i}.png")
    for i in (3, 4):
        Image.fromarray(arrays["images"][i]).save(root / "val" / "images" / f"v{i}.png")
        Image.fromarray(arrays["masks"][i]).save(root / "val" / "masks" / f"v{i}.png")
    domain = {"dataset": "seg-folder", "root": str(root), "crop_size": SIZE, "num_classes": 6, "label_free": True}
    method = CCTMethod(build_config(CCTConfig, {**TINY, "domains": [domain]}))
    data = method.further_domain_data[0]
    assert len(data.unlabeled) == 3 and len(data.val) == 2 and data.num_classes == 6
    assert "labeled_1" not in method.train_sources()


def test_the_uda_example_config_trains(tmp_path: Path) -> None:
    from fewlabels.engine import train

    path = CONFIGS / "scenes_uda.yaml"
    cfg = load_config(
        str(path),
        [
            "data.scenes_train=12",
            "data.scenes_val=2",
            "train.steps=2",
            "train.batch_size=2",
            "unlabeled_batch_size=2",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            f"output_dir={tmp_path}",
        ],
    )
    assert isinstance(cfg, CCTConfig) and cfg.domains[0].label_free and cfg.domains[0].dataset == "scenes-shift"
    cfg.domains[0].scenes_train, cfg.domains[0].scenes_val = 6, 2
    result = train(cfg)
    assert {"miou_d0", "miou_d1"} <= set(result.metrics)


def test_a_source_smaller_than_its_batch_is_repeated() -> None:
    method = CCTMethod(build_config(CCTConfig, {**TINY, "data": {**TINY_DATA, "labeled": 4, "scenes_train": 12}}))
    small = method.data.labeled
    assert len(small) == 4
    assert fill_batch(small, 4) is small
    filled = fill_batch(small, 8)
    assert isinstance(filled, Repeated) and len(filled) == 8
    assert [filled[i]["index"] for i in range(8)] == [small[i]["index"] for i in range(4)] * 2
    assert len(fill_batch(small, 9)) == 12
    # The supervised baseline fills its batch the same way (a CCT-vs-baseline comparison at 4 labels runs).
    from fewlabels.methods.supervised.config import SupervisedConfig
    from fewlabels.methods.supervised.method import SupervisedSegmentation

    sup = build_config(
        SupervisedConfig, {"data": {**TINY_DATA, "labeled": 4, "scenes_train": 12}, "train": {"batch_size": 8}}
    )
    assert len(SupervisedSegmentation(sup).train_sources()["labeled"].dataset) == 8


def test_four_labeled_images_train_with_a_batch_of_eight(tmp_path: Path) -> None:
    from fewlabels.engine import train

    cfg = build_config(
        CCTConfig,
        {
            **TINY,
            "data": {**TINY_DATA, "labeled": 4, "scenes_train": 12},
            "train": {"batch_size": 8, "steps": 2, "eval_every": 2, "checkpoint_every": 2},
            "unlabeled_batch_size": 10,  # more than the 8 unlabeled images too
            "output_dir": str(tmp_path),
        },
    )
    method = CCTMethod(cfg)
    sources = method.train_sources()
    assert len(sources["labeled"].dataset) == 8 and len(sources["unlabeled"].dataset) == 16
    result = train(cfg)
    assert np.isfinite(result.metrics["miou"])
