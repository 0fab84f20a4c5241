"""``eval.bn_reestimate``: before evaluating, the BatchNorm statistics of the mask-free network are re-estimated on
training batches; off by default."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_ac_method import TwoRegions  # the same directory (pytest rootdir-less import)
from torch import Tensor, nn

from fewlabels.config import ConfigError, build_config
from fewlabels.data.unsupervised import UnsupervisedData
from fewlabels.methods.ac.batchnorm import batchnorm_layers, image_batches, reestimate_batchnorm
from fewlabels.methods.ac.config import ACConfig
from fewlabels.methods.ac.method import ACMethod, ACModel


def _method(**sections: Any) -> ACMethod:
    data: dict[str, Any] = {
        "model": {"widths": [8], "decoder_blocks": 1, "k": 0},
        "loss": {"displacement": 1},
        "train": {"batch_size": 4},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    method = ACMethod(build_config(ACConfig, data))
    ds = TwoRegions()
    method.__dict__["data"] = UnsupervisedData(ds, ds, 2, ds.class_names, 3)  # replaces the cached property
    return method


def _trained_model(method: ACMethod) -> ACModel:
    """A model after a few masked training steps, so that its running statistics are those of masked views."""
    torch.manual_seed(0)
    model = method.build_model()
    assert isinstance(model, ACModel)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    images = torch.stack([method.data.train[i]["image"] for i in range(4)])
    for step in range(3):
        out = method.training_step(model, {"images": {"image": images}}, step, 3)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def _batch_statistics(model: ACModel, images: Tensor, masked: bool) -> list[tuple[Tensor, Tensor]]:
    """Per BatchNorm of ``model``: mean and unbiased variance over images and positions of its input, in a pass of a
    copy of the network (masks on or off) whose BatchNorms normalise with the batch's statistics."""
    net = copy.deepcopy(model)
    net.masked = masked
    inputs: list[Tensor] = []
    layers = batchnorm_layers(net)
    for layer in layers:
        layer.train()
        layer.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach().clone()))
    with torch.no_grad():
        net(images)
    assert len(inputs) == len(layers)
    return [(x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)) for x in inputs]


def test_reestimated_statistics_are_those_of_the_mask_free_network_on_the_training_batch() -> None:
    method = _method(eval={"bn_reestimate": 1})
    model = _trained_model(method)
    images = next(image_batches(method.data.train, 1, 4, method.config.seed))
    expected = _batch_statistics(model, images, masked=False)
    # by hand from the images for the stem's BatchNorm: its input is the stem convolution's output
    stem_conv = model.unmasked[0][0]
    assert isinstance(stem_conv, nn.Conv2d)
    first = F.conv2d(images, stem_conv.weight, padding=1)
    torch.testing.assert_close(expected[0][0], first.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(expected[0][1], first.var(dim=(0, 2, 3), unbiased=True))
    # the masked network's activations have other statistics: what training recorded is not what inference sees
    masked = _batch_statistics(model, images, masked=True)
    assert any(not torch.allclose(m[1], e[1], rtol=1e-3) for m, e in zip(masked, expected, strict=True))
    layers = batchnorm_layers(model)
    assert len(layers) == 6  # the stem, two per residual block (encoder, decoder), the encoder block's skip
    assert not all(torch.allclose(layer.running_var, var) for layer, (_, var) in zip(layers, expected, strict=True))

    with torch.no_grad():
        metrics = method.evaluate(model, torch.device("cpu"))

    assert metrics["bn_reestimate_batches"] == 1.0
    for layer, (mean, var) in zip(layers, expected, strict=True):
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.running_var, var, rtol=1e-5, atol=1e-6)
        assert layer.momentum == 0.1 and int(layer.num_batches_tracked) == 1
    # the rest is as it was: eval mode everywhere, the masks back on
    assert not any(m.training for m in model.modules()) and model.masked


def test_several_batches_average_the_per_batch_statistics_and_restore_the_modes() -> None:
    method = _method()
    model = _trained_model(method).train()
    batches = list(image_batches(method.data.train, 3, 2, seed=5))
    assert [b.shape for b in batches] == [(2, 3, 16, 16)] * 3
    per_batch = [_batch_statistics(model, b, masked=False) for b in batches]

    used = reestimate_batchnorm(model, batches, lambda x: model.cluster_probabilities(x, "plain"))

    assert used == 3
    for i, layer in enumerate(batchnorm_layers(model)):
        mean = torch.stack([stats[i][0] for stats in per_batch]).mean(0)
        var = torch.stack([stats[i][1] for stats in per_batch]).mean(0)
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.running_var, var, rtol=1e-5, atol=1e-6)
        assert int(layer.num_batches_tracked) == 3 and layer.momentum == 0.1
    assert all(m.training for m in model.modules()) and model.masked


def test_batches_are_the_same_images_every_time_and_cover_the_dataset_before_repeating() -> None:
    dataset = TwoRegions(n=5)
    first = torch.cat(list(image_batches(dataset, 2, 4, seed=1)))
    again = torch.cat(list(image_batches(dataset, 2, 4, seed=1)))
    torch.testing.assert_close(first, again)
    every = torch.stack([dataset[i]["image"] for i in range(5)])
    matches = [int(torch.nonzero((every == image).flatten(1).all(1))[0]) for image in first[:5]]
    assert sorted(matches) == [0, 1, 2, 3, 4]  # one pass over the 5 images first


def test_bn_reestimate_is_off_by_default_and_leaves_the_statistics_alone() -> None:
    assert ACConfig().eval.bn_reestimate == 0
    method = _method()
    model = _trained_model(method)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with torch.no_grad():
        metrics = method.evaluate(model, torch.device("cpu"))
    assert "bn_reestimate_batches" not in metrics
    after = model.state_dict()
    assert before and all(torch.equal(after[k], v) for k, v in before.items())


def test_bn_reestimate_refuses_the_masked_ensemble_inference() -> None:
    with pytest.raises(ConfigError, match="eval.bn_reestimate"):
        build_config(ACConfig, {"eval": {"bn_reestimate": 4}, "model": {"inference": "ensemble"}})
