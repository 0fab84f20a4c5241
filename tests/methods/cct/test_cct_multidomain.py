"""Multi-domain CCT: a shared encoder and shared aux decoders, one main decoder per domain, consistency on the
unlabeled images of every domain (config, routing of each image to its domain's decoder, training, evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cct_method import TINY

from fewlabels.config import ConfigError, build_config
from fewlabels.data.scenes import SCENE_CLASSES, generate_scenes
from fewlabels.engine.data import collate
from fewlabels.methods.cct import CCTConfig, CCTMethod
from fewlabels.methods.cct.model import CCTModel

NUM_CLASSES = len(SCENE_CLASSES)


def _inverted_scenes_folder(root: Path, n: int = 6, labeled: int = 3, size: int = 32) -> Path:
    """A second domain: scenes of another seed with inverted colours, as a user's images/masks folder where
    only the first ``labeled`` images have a mask."""
    arrays = generate_scenes(n, size, seed=7)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(255 - arrays["images"][i]).save(root / "images" / f"img{i}.png")
        if i < labeled:
            Image.fromarray(arrays["masks"][i]).save(root / "masks" / f"img{i}.png")
    return root


def _two_domain_config(tmp_path: Path, **extra: object) -> CCTConfig:
    folder = _inverted_scenes_folder(tmp_path / "domain1")
    domain = {"dataset": "folder", "root": str(folder), "crop_size": 32, "num_classes": NUM_CLASSES}
    return build_config(CCTConfig, {**TINY, "domains": [domain], **extra})


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"domains": [{"crop_size": 64}]}, "domains[0].crop_size"),
        ({"domains": [{"datset": "scenes"}]}, "domains[0].datset"),
        ({"domains": [{"crop_size": 32}], "predict_domain": 2}, "predict_domain"),
        ({"domains": [{"crop_size": 32}], "weak": {"labels_dir": "pseudo"}}, "weak.labels_dir"),
    ],
)
def test_invalid_domain_configs_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(CCTConfig, {**TINY, **data})
    assert err.value.key == key


def test_domains_parse_into_data_sections() -> None:
    cfg = build_config(CCTConfig, {**TINY, "domains": [{"scenes_train": 4, "crop_size": 32}], "predict_domain": 1})
    assert [d.scenes_train for d in cfg.all_domains] == [8, 4]
    assert cfg.all_domains[0] is cfg.data and cfg.predict_domain == 1


def test_a_label_free_domain_with_other_classes_is_refused(tmp_path: Path) -> None:
    # Labeled domains may have their own classes (test_cct_domains.py); a label-free one is predicted by domain
    # 0's main decoder, so it needs domain 0's classes.
    folder = _inverted_scenes_folder(tmp_path / "d1")
    domain = {"dataset": "folder", "root": str(folder), "crop_size": 32, "num_classes": 7, "label_free": True}
    cfg = build_config(CCTConfig, {**TINY, "domains": [domain]})
    with pytest.raises(ConfigError) as err:
        _ = CCTMethod(cfg).domain_data
    assert err.value.key == "domains[0].label_free" and "7" in str(err.value) and f"{NUM_CLASSES}" in str(err.value)


def test_each_image_is_decoded_by_its_domains_main_decoder() -> None:
    torch.manual_seed(0)
    method = CCTMethod(build_config(CCTConfig, {**TINY, "domains": [{"crop_size": 32}, {"crop_size": 32}]}))
    model = method.build_model()
    assert isinstance(model, CCTModel) and model.num_domains == 3 and len(model.domain_decoders) == 2
    z = torch.randn(4, model.net.feature_channels, 4, 4)
    ids = torch.tensor([2, 0, 1, 2])
    mixed = model.main_decode(z, ids)
    for i, d in enumerate(ids.tolist()):
        alone = model.main_decode(z[i : i + 1], d)
        torch.testing.assert_close(mixed[i : i + 1], alone)
    # The decoders differ (independent initialisation), so the routing is observable.
    assert not torch.allclose(model.main_decode(z, 0), model.main_decode(z, 1))
    with pytest.raises(ValueError, match="domain 3 out of range"):
        model.main_decode(z, 3)
    # A labeled loss on domain-1 images reaches domain 1's decoder only (and the shared encoder).
    images = torch.rand(2, 3, 32, 32)
    logits = model(images, mode="train", domains_l=torch.tensor([1, 1]))["logits_l"]
    logits.sum().backward()
    for other in (model.net.decoder, model.domain_decoders[1]):
        assert all(p.grad is None or not p.grad.any() for p in other.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.domain_decoders[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.encoder.parameters())


def test_a_training_step_draws_every_domain_and_trains_every_main_decoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = CCTMethod(_two_domain_config(tmp_path))
    sources = method.train_sources()
    assert sorted(sources) == ["labeled", "labeled_1", "unlabeled", "unlabeled_1"]
    assert len(sources["labeled_1"].dataset) == 3 and len(sources["unlabeled_1"].dataset) == 6
    model = method.build_model()
    rng = np.random.default_rng(0)
    batch = {
        name: collate([src.dataset.sample(i, rng) for i in range(2)])  # type: ignore[attr-defined]
        for name, src in sources.items()
    }
    out = method.training_step(model, batch, step=50, total_steps=100)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert float(out.logs["loss_unsup"]) > 0
    out.loss.backward()
    for decoder in (model.net.decoder, model.domain_decoders[0]):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux.parameters())


def test_evaluation_reports_every_domain_and_their_mean(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = CCTMethod(_two_domain_config(tmp_path))
    model = method.build_model().eval()
    with torch.no_grad():
        metrics = method.evaluate(model, torch.device("cpu"))
    assert metrics["miou"] == pytest.approx((metrics["miou_d0"] + metrics["miou_d1"]) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx((metrics["pixel_accuracy_d0"] + metrics["pixel_accuracy_d1"]) / 2)
    # Domain 1's evaluation ran its own decoder: evaluating domain 1's images with decoder 0 differs.
    from fewlabels.methods.segmentation import evaluate_segmentation

    d1 = method.domain_data[1]
    with torch.no_grad():
        other = evaluate_segmentation(method.predictor(model, 0), d1.val, NUM_CLASSES, method.config.eval, "cpu")
    assert other["pixel_accuracy"] != pytest.approx(metrics["pixel_accuracy_d1"])


def test_two_domain_training_runs_through_the_engine_and_predicts_with_the_chosen_decoder(tmp_path: Path) -> None:
    from fewlabels.engine import load_run, train

    cfg = _two_domain_config(
        tmp_path,
        train={"batch_size": 2, "steps": 3, "checkpoint_every": 3},
        output_dir=str(tmp_path / "runs"),
        name="md",
        predict_domain=1,
    )
    result = train(cfg)
    assert {"miou_d0", "miou_d1", "miou"} <= set(result.metrics)
    run = load_run(result.run_dir, device="cpu")
    assert run.config.predict_domain == 1 and run.model.num_domains == 2
    image = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        chosen = run.method.predictor(run.model)(image)
        torch.testing.assert_close(chosen, run.model(image, mode="predict", domains_l=1))


def test_a_domain_sections_own_checks_name_the_domain() -> None:
    with pytest.raises(ConfigError) as err:
        build_config(CCTConfig, {**TINY, "domains": [{"dataset": "folder", "crop_size": 32}]})
    assert err.value.key == "domains[0].root" and "needs data.root" in str(err.value)
