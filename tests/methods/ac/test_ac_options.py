"""AC options: IIC's details (lamb per head, head alternation per epoch, Sobel input), the thesis' open question
(random non-raster orderings, dropout views), IIC's "IID" evaluation splits and the reported evaluation size."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from test_ac_method import TwoRegions  # the same directory (pytest rootdir-less import)
from torch.utils.data import default_collate

from fewlabels.config import ConfigError, build_config
from fewlabels.data.registry import build_unsupervised_data
from fewlabels.data.unsupervised import UnsupervisedData
from fewlabels.methods.ac import method as ac_method
from fewlabels.methods.ac.config import ACConfig
from fewlabels.methods.ac.method import ACMethod
from fewlabels.methods.ac.model import RANDOM_ORDERING, ACNet, SobelInput


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _method(**sections: Any) -> ACMethod:
    data: dict[str, Any] = {"model": {"widths": [8], "decoder_blocks": 1, "k": 0}, "loss": {"displacement": 1}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    method = ACMethod(build_config(ACConfig, data))
    ds = TwoRegions()
    method.__dict__["data"] = UnsupervisedData(ds, ds, 2, ds.class_names, 3)
    return method


def _batch(method: ACMethod, n: int = 4) -> dict[str, Any]:
    ds = method.train_sources()["images"].dataset
    return {"images": default_collate([ds.sample(i, np.random.default_rng(i)) for i in range(n)])}


def _lambs(method: ACMethod, steps: range, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The lamb of the loss at each step (recorded from the loss function the method calls)."""
    seen: list[float] = []
    real = ac_method.information_loss

    def record(joint: torch.Tensor, lamb: float = 1.0) -> torch.Tensor:
        seen.append(lamb)
        return real(joint, lamb)

    monkeypatch.setattr(ac_method, "information_loss", record)
    model = method.build_model()
    for step in steps:
        method.training_step(model, _batch(method), step, 100)
    return seen


def test_each_head_has_its_own_lamb_and_heads_alternate_per_step_or_per_epoch(monkeypatch):
    torch.manual_seed(0)
    loss = {"displacement": 1, "lamb": 1.5, "lamb_over": 1.0}
    per_step = _method(model={"k_over": 4}, loss=loss)
    assert _lambs(per_step, range(4), monkeypatch) == [1.5, 1.0, 1.5, 1.0]  # main, over, main, over
    # TwoRegions has 8 images: with batch 4 a pass is 2 steps; over-clustering head first (IIC)
    per_epoch = _method(model={"k_over": 4}, loss={**loss, "head_alternation": "epoch"}, train={"batch_size": 4})
    assert _lambs(per_epoch, range(6), monkeypatch) == [1.0, 1.0, 1.5, 1.5, 1.0, 1.0]
    no_over = _method(loss={**loss, "head_alternation": "epoch"}, train={"batch_size": 4})
    assert _lambs(no_over, range(3), monkeypatch) == [1.5, 1.5, 1.5]


def test_sobel_input_follows_iic():
    x = torch.zeros(1, 4, 5, 5)
    x[:, :3, :, 3:] = 1.0  # a vertical edge in RGB; channel 3 (IR) constant 0.5
    x[:, 3] = 0.5
    out = SobelInput(keep=False)(x)
    assert out.shape == (1, 3, 5, 5)  # dx, dy, IR
    assert out[0, 0, 2, 2].item() == pytest.approx(-4.0)  # [[1,0,-1],[2,0,-2],[1,0,-1]] across the edge
    assert out[0, 1, 1:4, 1:4].abs().max().item() == pytest.approx(0.0, abs=1e-6)  # no horizontal edge inside
    torch.testing.assert_close(out[:, 2], x[:, 3])
    kept = SobelInput(keep=True)(x)
    assert kept.shape == (1, 6, 5, 5)
    torch.testing.assert_close(kept[:, :3], x[:, :3])
    net = ACNet(in_channels=3, widths=(8,), decoder_blocks=0, mask_from="features", k=2, sobel=True, sobel_keep=True)
    assert net(torch.rand(2, 3, 8, 8), orderings=("tl_row", "br_col"))["main"].shape == (4, 2, 8, 8)
    with pytest.raises(ConfigError, match="model.sobel"):
        build_config(ACConfig, {"model": {"sobel": True, "mask_from": "input"}})


def test_random_orderings_are_causal_in_their_own_order():
    """A random permutation of the feature positions as the ordering: out[p] depends on q only if q is p or before
    p in that permutation (per-position masks), through masked convs and attention (eval mode)."""
    torch.manual_seed(1)
    size = 6
    net = (
        ACNet(
            in_channels=2, widths=(8,), decoder_blocks=1, mask_from="features", k=3, attention=True, attention_heads=2
        )
        .double()
        .eval()
    )
    ranks = torch.randperm(size * size, generator=torch.Generator().manual_seed(5))
    feats = torch.randn(4, 8, size, size, dtype=torch.float64, requires_grad=True)
    out = net.ordered_logits(feats, [RANDOM_ORDERING], generator=torch.Generator().manual_seed(5))["main"]
    proj = torch.randn(3, dtype=torch.float64)
    score = torch.einsum("bkhw,k->hw", out, proj).flatten()
    basis = torch.eye(size * size, dtype=torch.float64)
    (jac,) = torch.autograd.grad(score, feats, grad_outputs=basis, is_grads_batched=True)
    dep = jac.abs().sum(dim=(1, 2)).flatten(1) > 0  # [p, q]
    seen_later = [
        (p, q) for p, q in itertools.product(range(size * size), repeat=2) if dep[p, q] and ranks[q] > ranks[p]
    ]
    assert not seen_later
    assert int(dep.sum()) > size * size  # it does see earlier positions, not only itself
    # two random views differ, and a stacked pair equals two separate passes with the same permutations
    g = torch.Generator().manual_seed(3)
    pair = net.ordered_logits(torch.cat([feats, feats]).detach(), [RANDOM_ORDERING] * 2, generator=g)["main"]
    assert (pair[:4] - pair[4:]).abs().max() > 1e-6


def test_dropout_and_random_views_train_and_evaluate_mask_free():
    for views in ({"kind": "dropout", "dropout": 0.3}, {"kind": "random"}):
        torch.manual_seed(2)
        method = _method(views=views)
        model = method.build_model()
        assert model.masked == (views["kind"] == "random")
        out = method.training_step(model, _batch(method), 0, 10)
        assert torch.isfinite(out.loss) and out.loss.item() < 0
        out.loss.backward()
        assert model.head.weight.grad.abs().sum() > 0
        model.eval()
        images = torch.rand(2, 3, 16, 16)
        first, second = method.predictor(model)(images), method.predictor(model)(images)
        torch.testing.assert_close(first, second)  # no dropout and no random ordering at inference
        model.masked = False
        torch.testing.assert_close(first, model(images)["main"])
    with pytest.raises(ConfigError, match="views.kind"):
        build_config(ACConfig, {"model": {"mask_from": "none"}, "views": {"kind": "dropout", "jitter": 0.2}})
    with pytest.raises(ConfigError, match="model.inference"):
        build_config(ACConfig, {"model": {"inference": "ensemble"}, "views": {"kind": "dropout"}})


def test_every_result_reports_its_evaluation_size_and_whole_images_are_evaluated():
    method = _method(data={"eval_images": 3})
    model = method.build_model().eval()
    metrics = method.evaluate(model, torch.device("cpu"))
    assert metrics["eval_images"] == 3 and metrics["eval_images_available"] == 8
    assert metrics["eval_pixels"] == 3 * 16 * 16
    scenes = ACMethod(
        build_config(
            ACConfig,
            {"data": {"scenes_n": 4, "scenes_size": 32, "input_size": 16, "eval_input_size": 32}, "model": {"k": 6}},
        )
    )
    assert scenes.data.train[0]["image"].shape[-1] == 16 and scenes.data.eval[0]["image"].shape[-1] == 32
    torch.testing.assert_close(
        scenes.data.eval[1]["mask"],
        build_unsupervised_data("scenes", input_size=32, scenes_n=4, scenes_size=32).eval[1]["mask"],
    )


def _coco(root: Path) -> Path:
    g = np.random.default_rng(0)
    for split, ids in (("train2017", ("000000000009", "000000000025")), ("val2017", ("000000000139",))):
        for sub in ("images", "annotations", "curated"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in ids:
            Image.fromarray(g.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
            fine = np.full((40, 50), 156, dtype=np.uint8)  # sky
            Image.fromarray(fine).save(root / "annotations" / split / f"{i}.png")
        for name in ("Coco164kFew_Stuff_6", "Coco164kFull_Stuff_Coarse_7"):
            (root / "curated" / split / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


def _potsdam(root: Path) -> Path:
    (root / "imgs").mkdir(parents=True)
    (root / "gt").mkdir()
    g = np.random.default_rng(0)
    lists = {"unlabelled_train": ["u1", "u2"], "labelled_train": ["a1"], "labelled_test": ["t1", "t2"]}
    for name, ids in lists.items():
        (root / f"{name}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            scipy.io.savemat(root / "imgs" / f"{i}.mat", {"img": g.integers(0, 255, (12, 12, 4), dtype=np.uint8)})
            if name != "unlabelled_train":
                scipy.io.savemat(root / "gt" / f"{i}.mat", {"gt": np.zeros((12, 12), dtype=np.int32)})
    return root


def test_default_splits_are_iic_iid(tmp_path):
    coco = build_unsupervised_data("cocostuff3", str(_coco(tmp_path / "coco")), input_size=8, scale=0.5)
    assert coco.train.items == [
        ("train2017", "000000000009"),
        ("train2017", "000000000025"),
        ("val2017", "000000000139"),
    ]
    assert coco.eval is coco.train  # match and test on the same train2017 + val2017 images
    assert coco.eval[2]["mask"].shape == (8, 8)
    iid_plus = build_unsupervised_data("cocostuff3", str(tmp_path / "coco"), "train2017", "val2017", 8, 0.5)
    assert len(iid_plus.train) == 2 and len(iid_plus.eval) == 1
    pots = build_unsupervised_data("potsdam3", str(_potsdam(tmp_path / "potsdam")), input_size=12)
    assert pots.train.ids == ["u1", "u2", "a1", "t1", "t2"]
    assert pots.eval.ids == ["a1", "t1", "t2"]  # labelled_train + labelled_test
    assert pots.eval[0]["image"].shape == (4, 12, 12)  # whole tiles
    only_test = build_unsupervised_data(
        "potsdam3", str(tmp_path / "potsdam"), eval_split="labelled_test", input_size=12
    )
    assert only_test.eval.ids == ["t1", "t2"]
