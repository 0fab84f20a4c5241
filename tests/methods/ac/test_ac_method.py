"""The AC method: training step (both view kinds), Hungarian evaluation, config checks, weight re-zeroing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from fewlabels.config import ConfigError, build_config
from fewlabels.data.base import FewDataset
from fewlabels.data.unsupervised import UnsupervisedData
from fewlabels.methods.ac.config import ACConfig
from fewlabels.methods.ac.masked_conv import MaskedConv2d
from fewlabels.methods.ac.method import ACMethod, ACModel, hungarian_from_votes
from fewlabels.methods.ac.views import TwoViewDataset, sample_orderings, step_generator
from fewlabels.metrics import matched_accuracy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to oversubscribed shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TwoRegions(FewDataset):
    """Left half dark, right half bright (+ noise); the mask says which half (class 0 / 1). Channel 1 carries
    the label for the Hungarian test (``label_in_channel``)."""

    def __init__(self, n: int = 8, size: int = 16) -> None:
        self.n, self.size = n, size
        self.num_classes, self.class_names, self.in_channels, self.ignore_index = 2, ["dark", "bright"], 3, 255

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        g = np.random.default_rng(index)
        mask = np.zeros((self.size, self.size), dtype=np.int64)
        cut = self.size // 2 + int(g.integers(-3, 4))
        mask[:, cut:] = 1
        image = 0.2 + 0.6 * mask[None].repeat(3, 0) + 0.05 * g.standard_normal((3, self.size, self.size))
        image[1] = mask  # channel 1 = the label (read by the fake predictor of the Hungarian test)
        return {"image": torch.from_numpy(image).float(), "mask": torch.from_numpy(mask), "index": index}


def _method(**sections: Any) -> ACMethod:
    data = {"model": {"widths": [8], "decoder_blocks": 1, "k": 0}, "loss": {"displacement": 1}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    method = ACMethod(build_config(ACConfig, data))
    ds = TwoRegions()
    method.__dict__["data"] = UnsupervisedData(ds, ds, 2, ds.class_names, 3)  # replaces the cached property
    return method


def _batch(method: ACMethod, n: int = 4) -> dict[str, Any]:
    ds = method.train_sources()["images"].dataset
    return {"images": default_collate([ds.sample(i, np.random.default_rng(i)) for i in range(n)])}


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"model": {"mask_from": "input"}},
        {"model": {"mask_from": "decoder", "k_over": 5, "attention": True, "attention_heads": 2}},
        {"model": {"mask_from": "features"}, "views": {"jitter": 0.2}},
        {"model": {"mask_from": "none"}, "views": {"jitter": 0.2, "flip": True}},
    ],
    ids=["F2", "F1", "F3+over+attention", "F2+jitter", "F4-iic"],
)
def test_training_step_gives_a_finite_loss_in_range_and_gradients(sections):
    torch.manual_seed(0)
    method = _method(**sections)
    model = method.build_model()
    for step in range(2):  # step 1 trains the over-clustering head when there is one
        out = method.training_step(model, _batch(method), step, 10)
        assert torch.isfinite(out.loss)
        k = 5 if step == 1 and model.k_over else 2
        lamb = method.config.loss.lamb
        assert -(2 * lamb - 1) * np.log(k) - 1e-6 <= out.loss.item() <= 1e-6
        assert set(out.logs) == {"mutual_information", "marginal_entropy", "conditional_entropy"}
        mi = float(out.logs["mutual_information"])
        assert mi == pytest.approx(float(out.logs["marginal_entropy"]) - float(out.logs["conditional_entropy"]))
        model.zero_grad()
        out.loss.backward()
        trained, idle = (model.head_over, model.head) if k == 5 else (model.head, model.head_over)
        assert trained.weight.grad.abs().sum() > 0
        if idle is not None:  # the idle head is in the graph (DDP) but gets exactly zero gradient
            assert idle.weight.grad is not None and idle.weight.grad.abs().sum() == 0


def test_two_views_come_from_one_forward_with_the_stem_run_once(monkeypatch):
    torch.manual_seed(0)
    method = _method()
    model = method.build_model()
    calls: list[int] = []
    model.unmasked.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model.ordered.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    method.training_step(model, _batch(method, 3), 0, 10)
    assert calls == [3, 6]  # stem on B images, ordered part on both views stacked (2B)


def test_orderings_depend_only_on_seed_and_step():
    pairs = [sample_orderings(step_generator(0, step)) for step in range(30)]
    assert pairs == [sample_orderings(step_generator(0, step)) for step in range(30)]  # any process, any resume
    assert all(a != b for a, b in pairs)
    assert len(set(pairs)) > 10
    assert pairs != [sample_orderings(step_generator(1, step)) for step in range(30)]


def test_augmented_views_are_a_function_of_the_sample_generator():
    base = TwoRegions()
    views = TwoViewDataset(base, jitter=0.0, flip=True)
    flips = []
    for i in range(8):
        a, b = views.sample(i, np.random.default_rng(i)), views.sample(i, np.random.default_rng(i))
        torch.testing.assert_close(a["image2"], b["image2"])
        expected = base[i]["image"].flip(-1) if bool(a["flipped"]) else base[i]["image"]
        torch.testing.assert_close(a["image2"], expected)
        flips.append(bool(a["flipped"]))
    assert any(flips) and not all(flips)
    jittered = TwoViewDataset(base, jitter=0.3, flip=False).sample(0, np.random.default_rng(0))
    assert not torch.equal(jittered["image"], jittered["image2"])
    assert 0.0 <= float(jittered["image"].min()) and float(jittered["image"].max()) <= 1.0
    assert "image2" not in views[0]  # evaluation: the plain sample


def test_hungarian_evaluation_of_a_permuted_perfect_clustering_is_100_percent(monkeypatch):
    method = _method()
    model = method.build_model()
    permutation = torch.tensor([1, 0])  # cluster = permutation[class]

    def perfect(model: ACModel, images: torch.Tensor) -> torch.Tensor:
        labels = images[:, 1].round().long()
        return torch.nn.functional.one_hot(permutation[labels], 2).permute(0, 3, 1, 2).float()

    monkeypatch.setattr(method, "_probabilities", perfect)
    metrics = method.evaluate(model, torch.device("cpu"))
    assert metrics["pixel_accuracy"] == 1.0 and metrics["miou"] == 1.0
    assert model.cluster_to_class.tolist() == [1, 0]  # cluster 0 is class 1
    # the vote-matrix matching agrees with fewlabels.metrics on per-pixel data
    target = torch.randint(0, 4, (500,))
    pred = torch.tensor([2, 0, 3, 1])[target]
    pred[:50] = torch.randint(0, 4, (50,))
    votes = torch.bincount(target * 4 + pred, minlength=16).view(4, 4)
    mapping = hungarian_from_votes(votes)
    assert mapping.tolist() == [1, 3, 0, 2]
    assert (mapping[pred] == target).float().mean().item() == pytest.approx(matched_accuracy(pred, target, 4))


def test_after_optimizer_step_rezeroes_masked_taps():
    method = _method()
    model = method.build_model()
    conv = next(m for m in model.modules() if isinstance(m, MaskedConv2d))
    with torch.no_grad():
        conv.weight.add_(1.0)  # e.g. a foreign checkpoint or an optimizer that touched masked taps
    method.after_optimizer_step(model, 0)
    assert bool((conv.weight[conv.mask == 0] == 0).all())
    assert bool((conv.weight[conv.mask == 1] != 0).all())


def test_inference_is_mask_free_by_default():
    assert ACConfig().model.inference == "plain"
    method = _method()
    model = method.build_model().eval()
    images = torch.rand(2, 3, 16, 16)
    model.masked = False
    expected = model(images)["main"]
    model.masked = True
    torch.testing.assert_close(method.predictor(model)(images), expected)  # unmatched: cluster order


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ConfigError, match="views.jitter"):
        build_config(ACConfig, {"model": {"mask_from": "none"}})
    with pytest.raises(ConfigError, match="model.k"):
        build_config(ACConfig, {"data": {"dataset": "potsdam3", "root": "/x"}, "model": {"k": 6}})
    with pytest.raises(ConfigError, match="data.root"):
        build_config(ACConfig, {"data": {"dataset": "cocostuff15"}})
    with pytest.raises(ConfigError, match="mask_from"):
        build_config(ACConfig, {"model": {"mask_from": "inputs"}})


CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "ac"


@pytest.mark.parametrize(
    "name",
    [
        "scenes",
        "scenes_iic",
        *(f"{d}{v}" for d in ("cocostuff3", "cocostuff15", "potsdam3", "potsdam6") for v in ("", "_iic")),
    ],
)
def test_config_files_validate_and_follow_the_iic_protocol(name):
    import fewlabels.methods.ac  # noqa: F401  (registers "ac")
    from fewlabels.registry import load_config

    cfg = load_config(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, ACConfig)
    protocol = {  # dataset: (input, over-clusters, clusters, lr, lamb, batch, T)
        "cocostuff3": (128, 15, 3, 1e-4, 1.5, 120, 10),
        "cocostuff15": (128, 45, 15, 1e-4, 1.0, 60, 10),
        "potsdam3": (200, 24, 3, 1e-5, 1.5, 75, 10),
        "potsdam6": (200, 36, 6, 1e-6, 1.0, 60, 5),
    }
    dataset = name.removesuffix("_iic")
    if dataset in protocol:
        got = (
            cfg.data.input_size,
            cfg.model.k_over,
            cfg.model.k,
            cfg.train.lr,
            cfg.loss.lamb,
            cfg.train.batch_size,
            cfg.loss.displacement,
        )
        assert got == protocol[dataset]
        assert cfg.train.optimizer == "adam" and not cfg.loss.collapsed
        # IIC: lamb_A = 1.0 for the over-clustering head, heads in turn per epoch; COCO on Sobel + RGB input
        assert cfg.loss.lamb_over == 1.0 and cfg.loss.head_alternation == "epoch"
        assert cfg.model.sobel == cfg.model.sobel_keep == dataset.startswith("cocostuff")
        # the IID protocol: default splits (train2017 + val2017; Potsdam's three lists, evaluated on the labelled two)
        assert cfg.data.split == cfg.data.eval_split == ""
        text = (CONFIGS / f"{name}.yaml").read_text()
        assert "IID" in text and ("train2017 + val2017" in text or "labelled_train + labelled_test" in text)
    else:  # the embedded scenes: whole images, every scene
        assert cfg.data.eval_input_size == cfg.data.scenes_size and cfg.data.eval_images == 0
    assert cfg.model.inference == "plain"
    assert (cfg.model.mask_from == "none") == name.endswith("_iic")


def test_evaluate_and_predict_with_the_real_network(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    method = _method()
    model = method.build_model().eval()
    metrics = method.evaluate(model, torch.device("cpu"))
    # recomputed independently: the mask-free network's clusters on every evaluation pixel, matched by
    # fewlabels.metrics; and the predictor (clusters moved to their matched classes) scored without matching
    ds = method.data.eval
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    target = torch.stack([ds[i]["mask"] for i in range(len(ds))])
    was = model.masked
    model.masked = False
    clusters = model(images)["main"].argmax(1)
    model.masked = was
    assert metrics["pixel_accuracy"] == pytest.approx(matched_accuracy(clusters, target, 2), abs=1e-9)
    predicted = method.predictor(model)(images).argmax(1)
    assert metrics["pixel_accuracy"] == pytest.approx((predicted == target).double().mean().item(), abs=1e-9)
    assert set(model.cluster_to_class.tolist()) == {0, 1}
    ensemble = _method(model={"inference": "ensemble"})
    views = model.cluster_probabilities(images, "ensemble").argmax(1)
    assert ensemble.evaluate(model, torch.device("cpu"))["pixel_accuracy"] == pytest.approx(
        matched_accuracy(views, target, 2), abs=1e-9
    )
    image = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    written = method.predict(model, [tmp_path / "x.png"], tmp_path / "out", torch.device("cpu"))
    assert [p.name for p in written] == ["x_clusters.png", "x_colour.png"]
    clusters = np.asarray(Image.open(written[0]))
    assert clusters.shape == (20, 24) and clusters.max() < 2
    assert np.asarray(Image.open(written[1])).shape == (20, 24, 3)
    figures = method.report_figures(model, tmp_path / "fig", torch.device("cpu"))
    assert all(p.is_file() for p in figures.values())
