"""CCTModel: which parameters each loss trains, the pair-wise and weak-label terms, multi-domain decoding."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fewlabels.methods.cct.config import PerturbationsConfig
from fewlabels.methods.cct.model import CCTLossSettings, CCTModel
from fewlabels.models import build_segmentation_model

SMALL = PerturbationsConfig(vat=1, dropout=1, cutout=1, context_mask=1, object_mask=1, feature_drop=1, feature_noise=1)


def _model(losses: CCTLossSettings | None = None, num_domains: int = 1, classes: int = 4) -> CCTModel:
    torch.manual_seed(0)
    net = build_segmentation_model("small_cnn", classes, output_stride=8, psp=False)
    return CCTModel(net, SMALL, background_classes=(0,), losses=losses, num_domains=num_domains)


def _grads(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_unsupervised_loss_trains_encoder_and_aux_decoders_but_not_the_main_decoder() -> None:
    model = _model()
    x_l, x_u = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = model(x_l, x_u)
    assert out["logits_l"].shape == (2, 4, 32, 32)
    out["loss_u"].backward()
    assert _grads(model.net.decoder) == 0.0
    assert _grads(model.net.encoder) > 0.0
    # every aux decoder (one per perturbation type) is trained, through every stage
    for k in range(model.aux.num_decoders):
        assert model.aux.classifier.grad[k].abs().sum() > 0
        assert model.aux.stage_weight.grad[:, k].abs().sum() > 0


def test_aux_mode_returns_the_k_outputs_consistent_with_the_loss() -> None:
    model = _model()
    torch.manual_seed(3)
    out = model(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32), mode="aux")
    aux, target = out["aux_logits"], out["target"]
    assert aux.shape == (7, 2, 4, 32, 32) and target.shape == (2, 4, 32, 32)
    expected = torch.stack([F.mse_loss(a.softmax(1), target) for a in aux]).mean()
    torch.testing.assert_close(out["loss_u"], expected)


def test_pairwise_loss_reaches_the_aux_decoder_gradient() -> None:
    model = _model(CCTLossSettings(pairwise=True, pairwise_decoders=4))
    out = model(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert out["loss_pair"] > 0
    out["loss_pair"].backward()
    assert model.aux.stage_weight.grad.abs().sum() > 0
    assert _grads(model.net.decoder) == 0.0


def test_weak_labels_train_the_aux_decoders_with_cross_entropy_ignoring_255() -> None:
    model = _model()
    pseudo = torch.randint(0, 4, (2, 32, 32))
    pseudo[:, :16] = 255
    torch.manual_seed(5)
    out = model(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32), mode="aux", pseudo_labels=pseudo)
    expected = torch.stack([F.cross_entropy(a, pseudo, ignore_index=255) for a in out["aux_logits"]]).mean()
    torch.testing.assert_close(out["loss_w"], expected, rtol=1e-4, atol=1e-6)
    all_ignored = model(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32), pseudo_labels=torch.full_like(pseudo, 255))
    assert all_ignored["loss_w"].item() == 0.0


def test_weak_labels_on_the_main_decoder_are_its_cross_entropy_and_leave_the_consistency_loss_as_it_was() -> None:
    pseudo = torch.randint(0, 4, (2, 32, 32))
    pseudo[:, :, :10] = 255
    x_l, x_u = torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32)
    model = _model(CCTLossSettings(weak_target="main"))
    torch.manual_seed(5)
    out = model(x_l, x_u, pseudo_labels=pseudo)
    expected = F.cross_entropy(model.net(x_u), pseudo, ignore_index=255)  # the main decoder on the unlabeled images
    torch.testing.assert_close(out["loss_w"], expected, rtol=1e-5, atol=1e-6)
    torch.manual_seed(5)
    torch.testing.assert_close(out["loss_u"], model(x_l, x_u)["loss_u"])  # same perturbations, same L_u
    # L_w trains the main decoder and the encoder, no aux decoder
    out["loss_w"].backward()
    assert _grads(model.net.decoder) > 0.0 and _grads(model.net.encoder) > 0.0
    assert _grads(model.aux) == 0.0
    # L_u still trains no main decoder: its target stays detached
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    model(x_l, x_u, pseudo_labels=pseudo)["loss_u"].backward()
    assert _grads(model.net.decoder) == 0.0 and _grads(model.aux) > 0.0
    all_ignored = model(x_l, x_u, pseudo_labels=torch.full_like(pseudo, 255))
    assert all_ignored["loss_w"].item() == 0.0


def test_multi_domain_uses_each_samples_domain_decoder() -> None:
    model = _model(num_domains=2)
    x = torch.rand(3, 3, 32, 32)
    domains = torch.tensor([0, 1, 1])
    logits = model(x, mode="predict", domains_l=domains)
    z = model.net.encode(x)
    torch.testing.assert_close(logits[0], model.net.decode(z)[0])
    torch.testing.assert_close(logits[1:], model.domain_decoders[0](z)[1:])
    # the unsupervised target of a domain-1 image comes from domain 1's decoder (detached: no main decoder gets
    # gradient from it); the unlabeled images are grouped by domain and given as per-domain counts
    out = model(x, x, domains_l=domains, domains_u=[1, 2])
    out["loss_u"].backward()
    assert _grads(model.domain_decoders) == 0.0
    with pytest.raises(TypeError, match="per-domain image counts"):
        model(x, x, domains_u=domains)


def test_predict_pads_odd_sizes_and_crops_back() -> None:
    model = _model().eval()
    x = torch.rand(1, 3, 30, 37)
    with torch.no_grad():
        logits = model(x, mode="predict")
        assert logits.shape == (1, 4, 30, 37)
        torch.testing.assert_close(logits, model.net(x))


def test_factored_first_layer_equals_decoding_the_perturbed_copies() -> None:
    torch.manual_seed(0)
    net = build_segmentation_model("small_cnn", 4, output_stride=8, psp=False)
    model = CCTModel(net, dataclasses.replace(SMALL, cutout_min_area=1, dropout=2))
    z = torch.relu(torch.randn(2, model.net.feature_channels, 4, 4))
    target = torch.softmax(4 * torch.randn(2, 4, 32, 32), dim=1)
    torch.manual_seed(7)
    perturbed = model.perturbed_features(z, target)
    expected = torch.matmul(model.aux.classifier.unsqueeze(1), perturbed.flatten(-2))
    torch.manual_seed(7)
    torch.testing.assert_close(model.classifier_outputs(z, target), expected, rtol=1e-4, atol=1e-5)
