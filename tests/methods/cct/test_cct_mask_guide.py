"""``perturbations.mask_source``: G-Cutout and the masking perturbations follow the main prediction's objects (the
reference) or those of the mean aux-decoder prediction on the unperturbed features."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fewlabels.config import ConfigError, build_config
from fewlabels.methods.cct.config import CCTConfig, PerturbationsConfig
from fewlabels.methods.cct.decoders import StackedUpsampleDecoders
from fewlabels.methods.cct.model import CCTModel
from fewlabels.methods.cct.perturbations import PerturbationInput, foreground_mask
from fewlabels.models import UpsampleDecoder, build_segmentation_model

SMALL = PerturbationsConfig(
    vat=1, dropout=1, cutout=2, context_mask=1, object_mask=1, feature_drop=1, feature_noise=1, cutout_min_area=1
)
# The object of the aux decoders in the region test: feature cells (rows 1-2, columns 0-1) of a 4x4 map.
REGION = torch.zeros(4, 4)
REGION[1:3, 0:2] = 1.0


def _model(mask_source: str = "main", classes: int = 4, **extra: object) -> CCTModel:
    torch.manual_seed(0)
    net = build_segmentation_model("small_cnn", classes, output_stride=8, psp=False)
    cfg = dataclasses.replace(SMALL, mask_source=mask_source, **extra)  # type: ignore[arg-type]
    return CCTModel(net, cfg, background_classes=(0,))


def _features(model: CCTModel, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.relu(torch.randn(2, model.net.feature_channels, 4, 4, generator=g))
    target = torch.softmax(4 * torch.randn(2, model.num_classes, 32, 32, generator=g), dim=1)
    return z, target


def _naive_guide(aux: StackedUpsampleDecoders, z: Tensor) -> Tensor:
    """The mean over the K decoders of ``softmax(g_a^k(z))``, each decoder on its own copy of ``z``."""
    k = aux.num_decoders
    with torch.no_grad():
        logits = aux(z.unsqueeze(0).expand(k, *z.shape))  # [K, B, C, H, W]
    return F.softmax(logits, dim=2).mean(dim=0)


def _break_icnr(aux: StackedUpsampleDecoders) -> None:
    """Make the four sub-pixels of every stage differ (ICNR starts them equal, which would hide a wrong sub-pixel)."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        aux.stage_weight.add_(0.5 * torch.randn(aux.stage_weight.shape, generator=g))
        aux.stage_bias.add_(0.5 * torch.randn(aux.stage_bias.shape, generator=g))


def _copy_stages(stages: Tensor, bias: Tensor) -> None:
    """Stages that copy each class to its four sub-pixels, ``logit(c, pixel) = h(c, cell)`` (no bias)."""
    classes = stages.shape[-1]
    stages.zero_()
    bias.zero_()
    for c in range(classes):
        stages[..., c * 4 : c * 4 + 4, c] = 1.0


def _disagreeing_model(mask_source: str) -> tuple[CCTModel, Tensor, Tensor]:
    """A model whose main decoder predicts the background everywhere while every aux decoder predicts class 1 on
    :data:`REGION` and the background elsewhere; the features ``z`` and the main prediction ``target``."""
    model = _model(mask_source)
    d = model.net.feature_channels
    with torch.no_grad():
        # main decoder: class 0 (background) by a margin of 10 everywhere, whatever the features
        decoder = model.net.decoder
        assert isinstance(decoder, UpsampleDecoder)
        last = decoder.stages[-1].conv
        assert isinstance(last, torch.nn.Conv2d) and last.bias is not None
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0:4] = 10.0
        # aux decoders: class 0 = 5 * z[1] (ones), class 1 = 10 * z[0] (the region), on copy stages
        aux = model.aux
        aux.classifier.zero_()
        aux.classifier[:, 0, 1] = 5.0
        aux.classifier[:, 1, 0] = 10.0
        _copy_stages(aux.stage_weight, aux.stage_bias)
    g = torch.Generator().manual_seed(2)
    z = torch.rand(2, d, 4, 4, generator=g) + 0.5
    z[:, 0] = REGION
    z[:, 1] = 1.0
    with torch.no_grad():
        target = F.softmax(model.net.decode(z), dim=1)
    return model, z, target


def test_mask_source_defaults_to_main_and_main_is_the_reference_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PerturbationsConfig().mask_source == "main" and CCTConfig().perturbations.mask_source == "main"
    model = _model("main")
    assert not model.guided_by_aux
    z, target = _features(model)

    def no_guide(*args: object) -> Tensor:
        raise AssertionError("mask_source='main' computes no aux guide")

    monkeypatch.setattr(model, "aux_guide", no_guide)
    assert model.perturbation_input(z, target).guide is None
    torch.manual_seed(7)
    perturbed = model.perturbed_features(z, target)
    torch.manual_seed(7)
    h = model.classifier_outputs(z, target)
    # the same draws on an input built as before the option existed (no guide argument)
    inputs = PerturbationInput(z, target, model.perturbations, (0,), model.aux, model.chunk_elements)
    torch.manual_seed(7)
    copies = [g.perturbation.copies(inputs, g.count, g.decoders) for g in model.perturbation_groups if g.count]
    assert torch.equal(perturbed, torch.cat(copies))
    torch.testing.assert_close(inputs.foreground, foreground_mask(target, (4, 4), (0,)), rtol=0, atol=0)
    torch.manual_seed(7)
    assert torch.equal(h, model.classifier_outputs(z, target))


def test_aux_masks_follow_the_aux_decoders_objects_not_the_main_ones() -> None:
    # main: the main decoder sees no object, so Con-Msk keeps nothing, Obj-Msk everything, G-Cutout cuts nothing
    model, z, target = _disagreeing_model("main")
    assert (target.argmax(1) == 0).all()
    torch.manual_seed(3)
    main = model.perturbed_features(z, target)
    g = model.groups
    assert (main[g["context_mask"]] == 0).all()
    assert torch.equal(main[g["object_mask"]], z.unsqueeze(0))
    assert torch.equal(main[g["cutout"]], z.unsqueeze(0).expand(2, -1, -1, -1, -1))

    # aux: the same model with the masks guided by the aux decoders, whose object is REGION
    model, z, target = _disagreeing_model("aux")
    assert model.guided_by_aux
    guide = model.aux_guide(z)
    assert guide.shape == (2, 4, 4, 4)  # at the feature size: the pixels the masks read
    assert torch.equal(guide.argmax(1), REGION.long().expand(2, -1, -1))
    inputs = model.perturbation_input(z, target)
    assert torch.equal(inputs.foreground, REGION.expand(2, -1, -1))
    assert torch.equal(inputs.target, target)  # the consistency target is still the main prediction
    torch.manual_seed(3)
    aux = model.perturbed_features(z, target)
    region = REGION[None, None, None]  # [1, 1, 1, h, w]
    assert torch.equal(aux[g["context_mask"]], z.unsqueeze(0) * region)
    assert torch.equal(aux[g["object_mask"]], z.unsqueeze(0) * (1 - region))
    # G-Cutout erases one cell (box side max(1, round(0.4 * 2))) inside the region for every copy and sample, all
    # channels, and nothing outside it
    erased = (aux[g["cutout"]] == 0).all(dim=2)  # [2, B, h, w]
    assert torch.equal(erased.sum(dim=(-2, -1)), torch.ones(2, 2, dtype=torch.long))
    assert not (erased & (REGION == 0)).any()
    outside = (REGION == 0).expand(2, 2, model.net.feature_channels, -1, -1)
    assert torch.equal(aux[g["cutout"]][outside], z.unsqueeze(0).expand(2, -1, -1, -1, -1)[outside])
    # the types that do not follow objects are unchanged by the option (same draws, same copies)
    for name in ("vat", "dropout", "feature_drop", "feature_noise"):
        torch.testing.assert_close(aux[g[name]], main[g[name]], rtol=0, atol=0)


def test_the_guide_is_the_mean_of_the_aux_decoders_softmax_at_the_pixels_the_masks_read() -> None:
    model = _model("aux")
    _break_icnr(model.aux)
    z, _ = _features(model)
    naive = _naive_guide(model.aux, z)  # [B, C, 32, 32], every decoder at full resolution
    guide = model.aux_guide(z)
    # the full-resolution mean prediction at pixel (8y, 8x) of every 8 x 8 block ...
    torch.testing.assert_close(guide, naive[..., ::8, ::8], rtol=1e-5, atol=1e-6)
    # ... which is what the nearest resize of the masks reads: the same foreground, whatever the background classes
    for background in ((0,), (1, 2), (3,)):
        assert torch.equal(foreground_mask(guide, (4, 4), background), foreground_mask(naive, (4, 4), background))
    # K separate UpsampleDecoders give the same mean, which is none of their single predictions
    single = torch.stack([F.softmax(model.aux.export_decoder(k)(z), dim=1) for k in range(model.aux.num_decoders)])
    torch.testing.assert_close(single.mean(dim=0), naive, rtol=1e-5, atol=1e-6)
    assert all(not torch.allclose(naive, one, atol=1e-3) for one in single)
    torch.testing.assert_close(guide.sum(dim=1), torch.ones(2, 4, 4))


def test_the_shortcut_guide_gives_the_full_resolution_masks_on_a_trained_looking_model() -> None:
    """Larger logits (sharper, more varied argmax) and a non-square map: the masks still match the full decode."""
    torch.manual_seed(5)
    net = build_segmentation_model("small_cnn", 5, output_stride=8, psp=False)
    model = CCTModel(net, dataclasses.replace(SMALL, mask_source="aux"), background_classes=(0, 4))
    with torch.no_grad():
        model.aux.classifier.mul_(4.0)
    _break_icnr(model.aux)
    z = torch.relu(torch.randn(3, model.net.feature_channels, 5, 7))
    naive = _naive_guide(model.aux, z)
    assert naive.shape[-2:] == (40, 56)
    assert torch.equal(foreground_mask(model.aux_guide(z), (5, 7), (0, 4)), foreground_mask(naive, (5, 7), (0, 4)))
    assert len(naive.argmax(1).unique()) > 2  # not a trivial case


def test_fused_path_equals_the_reference_path_with_aux_masks() -> None:
    model = _model("aux", dropout=2)
    z, target = _features(model)
    fg_aux = model.perturbation_input(z, target).foreground
    assert not torch.equal(fg_aux, foreground_mask(target, (4, 4), (0,)))  # the guide changes the masks
    torch.manual_seed(7)
    perturbed = model.perturbed_features(z, target)
    torch.manual_seed(7)
    h = model.classifier_outputs(z, target)
    expected = torch.matmul(model.aux.classifier.unsqueeze(1), perturbed.flatten(-2))
    torch.testing.assert_close(h, expected, rtol=1e-4, atol=1e-5)
    ctx = perturbed[model.groups["context_mask"]]
    torch.testing.assert_close(ctx, z.unsqueeze(0) * fg_aux[None, :, None], rtol=0, atol=0)


def test_the_guide_carries_no_gradient() -> None:
    model = _model("aux")
    z, target = _features(model)
    z.requires_grad_(True)
    with torch.enable_grad():
        guide = model.aux_guide(z)
        assert not guide.requires_grad and guide.grad_fn is None
        # only the perturbed features of the object-following types: no aux parameter is on their graph
        perturbed = model.perturbed_features(z, target)
    g = model.groups
    perturbed[g["cutout"].start : g["object_mask"].stop].sum().backward()
    assert all(p.grad is None for p in model.aux.parameters())
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_no_object_following_type_means_no_guide(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("aux", cutout=0, context_mask=0, object_mask=0)
    assert not model.guided_by_aux

    def no_guide(*args: object) -> Tensor:
        raise AssertionError("no type follows the objects: the guide is not computed")

    monkeypatch.setattr(model, "aux_guide", no_guide)
    z, target = _features(model)
    assert model.perturbation_input(z, target).guide is None
    model(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32))


def test_each_domain_is_guided_by_its_own_aux_decoders_and_background() -> None:
    torch.manual_seed(0)
    net = build_segmentation_model("small_cnn", 4, output_stride=8, psp=False)
    cfg = dataclasses.replace(SMALL, mask_source="aux")
    model = CCTModel(net, cfg, num_domains=2, domain_classes=[4, 3], domain_backgrounds=[(0,), (1, 2)])
    z, _ = _features(model)
    target = torch.softmax(torch.randn(2, 3, 32, 32), dim=1)
    guide = model.aux_guide(z, domain=1)
    assert guide.shape == (2, 3, 4, 4)
    torch.testing.assert_close(guide, _naive_guide(model.aux_of(1), z)[..., ::8, ::8], rtol=1e-5, atol=1e-6)
    inputs = model.perturbation_input(z, target, domain=1)
    assert inputs.aux is model.domain_aux[0] and inputs.background_classes == (1, 2)
    assert torch.equal(inputs.foreground, foreground_mask(guide, (4, 4), (1, 2)))
    # domain 0 uses its own decoders: another guide
    assert not torch.allclose(model.aux_guide(z, domain=0)[:, :3], guide)
    # a training step with both domains' unlabeled images runs through both guides
    out = model(torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32), domains_l=[1, 1], domains_u=[1, 2])
    assert torch.isfinite(out["loss_u"])


def test_a_bogus_mask_source_is_refused() -> None:
    assert build_config(CCTConfig, {"perturbations": {"mask_source": "aux"}}).perturbations.mask_source == "aux"
    with pytest.raises(ConfigError) as err:
        build_config(CCTConfig, {"perturbations": {"mask_source": "bogus"}})
    assert err.value.key == "perturbations.mask_source"
    assert "valid choices: main, aux" in str(err.value)
    # a config made in Python skips the config checks: the model refuses it
    net = build_segmentation_model("small_cnn", 4, output_stride=8, psp=False)
    with pytest.raises(ValueError, match="mask_source"):
        CCTModel(net, dataclasses.replace(SMALL, mask_source="bogus"))  # type: ignore[arg-type]
