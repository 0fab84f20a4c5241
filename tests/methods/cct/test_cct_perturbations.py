"""Each CCT perturbation has its defining property; the registry of types orders the aux decoders of both paths."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fewlabels.methods.cct.config import PerturbationsConfig
from fewlabels.methods.cct.decoders import StackedUpsampleDecoders
from fewlabels.methods.cct.fused import fused_vat_direction
from fewlabels.methods.cct.model import CCTModel
from fewlabels.methods.cct.perturbations import (
    ChannelMaskPerturbation,
    CopyPerturbation,
    MaskPerturbation,
    Perturbation,
    PerturbationInput,
    SpatialMaskPerturbation,
    connected_components,
    context_masking,
    cutout_keep_mask,
    feature_drop_mask,
    feature_noise,
    fold_runs,
    foreground_mask,
    get_perturbation,
    object_masking,
    register_perturbation,
    registered_perturbations,
    spatial_dropout,
    unregister_perturbation,
    vat_direction,
)
from fewlabels.models import build_segmentation_model


def test_feature_drop_zeroes_exactly_the_positions_at_or_above_gamma_times_max() -> None:
    torch.manual_seed(0)
    z = torch.rand(2, 4, 5, 5)
    gamma = torch.tensor([0.7, 0.9])
    keep = feature_drop_mask(z, gamma)
    attention = z.mean(1)
    for i, g in enumerate(gamma):
        for b in range(2):
            expected = (attention[b] < g * attention[b].max()).float()
            torch.testing.assert_close(keep[i, b, 0], expected)
    assert keep.sum() < keep.numel()  # the peak is always dropped


def test_feature_noise_is_shared_over_the_batch_and_bounded() -> None:
    torch.manual_seed(0)
    z = torch.rand(3, 4, 5, 5) + 0.5
    out = feature_noise(z, n=2, uniform_range=0.3)
    ratio = out / z - 1.0  # the noise N
    torch.testing.assert_close(ratio[:, 0], ratio[:, 2])
    assert ratio.abs().max() <= 0.3 + 1e-6
    assert not torch.allclose(ratio[0], ratio[1])  # one draw per decoder


def test_spatial_dropout_drops_whole_channels_and_rescales() -> None:
    torch.manual_seed(0)
    z = torch.rand(2, 64, 3, 3) + 0.1
    out = spatial_dropout(z, n=3, p=0.5)
    ratio = (out / z).flatten(-2)
    assert set(ratio.unique().tolist()) <= {0.0, 2.0}
    assert (ratio == ratio[..., :1]).all()  # constant over each channel
    assert 0.3 < (ratio == 0).float().mean() < 0.7


def test_object_and_context_masking_split_the_features_by_the_prediction() -> None:
    labels = torch.tensor([[[0, 1], [2, 0]]])
    logits = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    fg = foreground_mask(logits, (2, 2), background_classes=(0,))
    torch.testing.assert_close(fg, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    z = torch.rand(1, 3, 2, 2) + 0.1
    obj = object_masking(z, fg, n=2)
    ctx = context_masking(z, fg, n=2)
    assert obj.shape == (2, 1, 3, 2, 2)
    assert (obj[:, :, :, fg[0] == 1] == 0).all() and (obj[:, :, :, fg[0] == 0] > 0).all()
    torch.testing.assert_close(obj + ctx, z.expand(2, -1, -1, -1, -1))
    # configurable background: class 2 as background too; nearest resize keeps every 2nd pixel of a 4x4 map
    fg2 = foreground_mask(labels.repeat_interleave(2, 1).repeat_interleave(2, 2), (2, 2), background_classes=(0, 2))
    torch.testing.assert_close(fg2, torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))


def test_connected_components_agree_with_scipy_on_a_winding_shape() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    mask = torch.zeros(1, 12, 12, dtype=torch.bool)
    mask[0, 1, 1:11] = True  # a U / S shape: long geodesic path
    mask[0, 1:6, 10] = True
    mask[0, 5, 2:11] = True
    mask[0, 5:9, 2] = True
    mask[0, 8, 2:11] = True
    mask[0, 3, 3:6] = True  # a separate blob
    mask[0, 11, 11] = True  # a single pixel, diagonal neighbours only count with 8-connectivity
    mask[0, 10, 10] = True
    ours = connected_components(mask)[0].numpy()
    ref, count = ndimage.label(mask[0].numpy(), structure=[[1, 1, 1], [1, 1, 1], [1, 1, 1]])
    assert count == 3
    pairs = set(zip(ours[ref > 0].tolist(), ref[ref > 0].tolist()))
    assert len(pairs) == count and len({a for a, _ in pairs}) == count  # a bijection between the labelings
    assert (ours[ref == 0] == 0).all()


def test_guided_cutout_erases_one_box_inside_each_object_and_nothing_on_background() -> None:
    torch.manual_seed(0)
    fg = torch.zeros(2, 20, 20)
    fg[0, 2:12, 3:8] = 1.0  # 10 x 5 object -> 4 x 2 box
    fg[0, 15:20, 10:20] = 1.0  # 5 x 10 object -> 2 x 4 box
    keep = cutout_keep_mask(fg, n=5, erase=0.4, min_area=2)
    assert keep.shape == (5, 2, 1, 20, 20)
    assert (keep[:, 1] == 1).all()  # background-only image: nothing erased
    for i in range(5):
        erased = keep[i, 0, 0] == 0
        first, second = erased[:13], erased[13:]
        assert first.sum() == 8 and second.sum() == 8
        ys, xs = first.nonzero(as_tuple=True)
        assert ys.min() >= 2 and ys.max() <= 11 and xs.min() >= 3 and xs.max() <= 7
        assert ys.max() - ys.min() + 1 == 4 and xs.max() - xs.min() + 1 == 2
        ys, xs = second.nonzero(as_tuple=True)
        assert ys.min() + 13 >= 15 and xs.min() >= 10
    # a too-small object is left alone
    tiny = torch.zeros(1, 8, 8)
    tiny[0, 4, 4] = 1.0
    assert (cutout_keep_mask(tiny, n=2, min_area=2) == 1).all()


def test_vat_perturbation_has_norm_eps_per_sample_and_follows_the_adversarial_direction() -> None:
    torch.manual_seed(0)
    dec = StackedUpsampleDecoders(2, 32, 4, 8)
    z = torch.relu(torch.randn(3, 32, 4, 4)) * 3

    def decode(x: torch.Tensor) -> torch.Tensor:
        return dec.forward_subpixel(x, slice(0, 2))

    eps = 2.0
    d0 = torch.rand(2, 3, 32, 4, 4) - 0.5
    r = vat_direction(z, decode, n=2, init=d0)
    norms = (eps * r).flatten(2).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full((2, 3), eps))
    # the same power iteration in float64 with a tiny step (the exact direction) agrees with float32's
    dec64 = copy.deepcopy(dec).double()
    r64 = vat_direction(z.double(), lambda x: dec64.forward_subpixel(x, slice(0, 2)), n=2, xi=1e-9, init=d0.double())
    cosine = (r.double() * r64).flatten(2).sum(-1)
    assert (cosine > 0.99).all()
    # the reference's absolute xi = 1e-6 (relative ~2.5e-8 here) in float32 does not give that direction
    r_ref = vat_direction(z, decode, n=2, xi=1e-6 / z.flatten(1).norm(dim=1).min().item(), init=d0)
    assert ((r_ref.double() * r64).flatten(2).sum(-1) < 0.9).any()


def test_fused_vat_direction_equals_the_autograd_power_iteration() -> None:
    torch.manual_seed(0)
    dec = StackedUpsampleDecoders(2, 16, 4, 8).double()
    with torch.no_grad():
        dec.stage_bias.normal_()
    z = torch.relu(torch.randn(3, 16, 3, 4, dtype=torch.float64))
    d0 = torch.rand(2, 3, 16, 3, 4, dtype=torch.float64) - 0.5
    ref = vat_direction(z, lambda x: dec.forward_subpixel(x), n=2, xi=1e-3, iterations=2, init=d0)
    fused = fused_vat_direction(
        z,
        dec.classifier,
        dec.stage_weight,
        dec.stage_bias,
        xi=1e-3,
        iterations=2,
        init=d0,
        chunk_elements=500,
    )
    torch.testing.assert_close(fused, ref)


# --- the registry ------------------------------------------------------------------------------------------------

BUILTIN = ["vat", "dropout", "cutout", "context_mask", "object_mask", "feature_drop", "feature_noise"]


@dataclasses.dataclass
class ToyConfig(PerturbationsConfig):
    """The perturbations section with the count and the parameter of a toy type, as a new type adds them."""

    toy: int = dataclasses.field(default=1, metadata={"help": "toy decoders", "min": 0})
    toy_range: float = dataclasses.field(default=0.5, metadata={"help": "scales drawn in 1 +- toy_range", "min": 0})


def _scales(inputs: PerturbationInput, *shape: int) -> Tensor:
    spread = cast(ToyConfig, inputs.config).toy_range
    z = inputs.z
    return 1.0 + spread * (2.0 * torch.rand(*shape, device=z.device, dtype=z.dtype) - 1.0)


class ChannelScale(ChannelMaskPerturbation):
    """Toy feature scaling: every channel of every copy and sample scaled by its own factor."""

    name = "toy"
    count_field = "toy"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        b, d = inputs.z.shape[:2]
        return _scales(inputs, n, b, d, 1, 1)


class SampleScale(SpatialMaskPerturbation):
    """Toy feature scaling: every copy of every sample scaled by one factor (a mask constant over the positions)."""

    name = "toy"
    count_field = "toy"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        return _scales(inputs, n, inputs.z.shape[0], 1, 1, 1)


class PositionScale(CopyPerturbation):
    """Toy feature scaling: every element of every copy scaled by its own factor (not foldable)."""

    name = "toy"
    count_field = "toy"

    def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
        return inputs.z * _scales(inputs, n, *inputs.z.shape)


SMALL = ToyConfig(vat=1, dropout=1, cutout=1, context_mask=1, object_mask=1, feature_drop=1, feature_noise=1)


@pytest.fixture(params=[ChannelScale, SampleScale, PositionScale], ids=["channel", "spatial", "copies"])
def toy(request: pytest.FixtureRequest) -> Iterator[Perturbation]:
    """Each kind of toy type registered for the test only."""
    register_perturbation(request.param)
    try:
        yield get_perturbation("toy")
    finally:
        unregister_perturbation("toy")


def _model(cfg: PerturbationsConfig, classes: int = 4) -> CCTModel:
    torch.manual_seed(0)
    net = build_segmentation_model("small_cnn", classes, output_stride=8, psp=False)
    return CCTModel(net, dataclasses.replace(cfg, cutout_min_area=1), background_classes=(0,))


def _features(model: CCTModel) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    z = torch.relu(torch.randn(2, model.net.feature_channels, 4, 4, generator=g))
    target = torch.softmax(4 * torch.randn(2, model.num_classes, 32, 32, generator=g), dim=1)
    return z, target


def test_the_builtin_types_are_registered_in_the_reference_order() -> None:
    names = [p.name for p in registered_perturbations()]
    assert names == BUILTIN
    assert list(PerturbationsConfig().counts) == names
    assert [p.fold for p in registered_perturbations()] == [
        "copies",
        "channel",
        "spatial",
        "spatial",
        "spatial",
        "spatial",
        "copies",
    ]


def test_a_registered_toy_type_gets_its_own_aux_decoder_after_the_others(toy: Perturbation) -> None:
    assert [p.name for p in registered_perturbations()] == [*BUILTIN, "toy"]
    assert list(SMALL.counts) == [*BUILTIN, "toy"] and SMALL.total == 8
    model = _model(SMALL)
    assert model.aux.num_decoders == 8
    assert model.groups["toy"] == slice(7, 8)
    assert [g.perturbation.name for g in model.perturbation_groups] == [*BUILTIN, "toy"]
    # the toy follows F-Noise (apply-to-copies), so a toy mask is a run of its own, not part of the spatial run
    runs = [[g.perturbation.name for g in run] for run in fold_runs(model.perturbation_groups)]
    spatial = ["cutout", "context_mask", "object_mask", "feature_drop"]
    assert runs == [["vat"], ["dropout"], spatial, ["feature_noise"], ["toy"]]
    # and it trains: its decoder gets gradient from the consistency loss
    out = model(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32))
    out["loss_u"].backward()
    assert model.aux.classifier.grad[7].abs().sum() > 0 and model.aux.stage_weight.grad[:, 7].abs().sum() > 0


def test_fused_path_equals_the_k_separate_decoders_with_a_toy_type(toy: Perturbation) -> None:
    model = _model(dataclasses.replace(SMALL, dropout=2, toy=2))
    z, target = _features(model)
    torch.manual_seed(7)
    perturbed = model.perturbed_features(z, target)  # reference path: [K, B, D, h, w]
    torch.manual_seed(7)
    h = model.classifier_outputs(z, target)  # fused path: [K, B, C, hw]
    torch.testing.assert_close(h, torch.matmul(model.aux.classifier.unsqueeze(1), perturbed.flatten(-2)))
    # the toy's copies are the features scaled by factors in 1 +- 0.5, drawn afresh for each decoder
    toy_copies = perturbed[model.groups["toy"]]
    assert not torch.allclose(toy_copies[0], toy_copies[1])
    active = z > 0.1
    ratio = toy_copies[:, active] / z[active]
    assert 0.5 - 1e-5 <= ratio.min() and ratio.max() <= 1.5 + 1e-5
    # decoded to the end, by the stacked stages and by K separate UpsampleDecoders
    logits = model.aux.from_subpixel_layout(model.aux.stages_subpixel(h), 4, 4)
    for k in range(model.aux.num_decoders):
        expected = model.aux.export_decoder(k)(perturbed[k])
        torch.testing.assert_close(logits[k], expected, rtol=1e-4, atol=1e-5)


def _marker_types(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> dict[str, float]:
    """Make every registered type perturb by a constant factor of its own, recording the order of the calls."""
    factors: dict[str, float] = {}
    for i, perturbation in enumerate(registered_perturbations()):
        factor = factors[perturbation.name] = float(i + 2)

        def record(name: str = perturbation.name, value: float = factor) -> float:
            calls.append(name)
            return value

        if isinstance(perturbation, MaskPerturbation):

            def mask(inputs: PerturbationInput, n: int, value: Callable[[], float] = record) -> Tensor:
                return torch.full((n, inputs.z.shape[0], 1, 1, 1), value())

            monkeypatch.setattr(perturbation, "mask", mask)
        else:
            assert isinstance(perturbation, CopyPerturbation)
            # the fused path of a copy type goes through its copies (I-VAT's own shortcut is bypassed here)

            def copies(
                inputs: PerturbationInput, n: int, decoders: slice, value: Callable[[], float] = record
            ) -> Tensor:
                return value() * inputs.z.unsqueeze(0).expand(n, -1, -1, -1, -1)

            def first_layer(
                inputs: PerturbationInput,
                n: int,
                decoders: slice,
                weight: Tensor,
                zf: Tensor,
                p: CopyPerturbation = perturbation,
            ) -> Tensor:
                return CopyPerturbation.first_layer(p, inputs, n, decoders, weight, zf)

            monkeypatch.setattr(perturbation, "copies", copies)
            monkeypatch.setattr(perturbation, "first_layer", first_layer)
    return factors


@pytest.mark.parametrize(
    "counts",
    [
        {"vat": 1, "dropout": 2, "cutout": 3, "context_mask": 1, "object_mask": 2, "feature_drop": 1},
        {"vat": 0, "dropout": 1, "cutout": 0, "context_mask": 2, "object_mask": 0, "feature_drop": 3},
    ],
    ids=["all", "holes"],
)
def test_registry_order_is_the_aux_decoder_order_of_both_paths(
    toy: Perturbation, counts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dataclasses.replace(SMALL, feature_noise=2, toy=2, **counts)
    model = _model(cfg)
    calls: list[str] = []
    factors = _marker_types(monkeypatch, calls)
    used = [p.name for p in registered_perturbations() if p.count(cfg)]
    # decoder k belongs to the k-th type of the registry, counted with multiplicity
    owners = [name for name in used for _ in range(cfg.counts[name])]
    assert len(owners) == model.aux.num_decoders == cfg.total
    assert [name for name in used for _ in range(model.groups[name].stop - model.groups[name].start)] == owners
    z, target = _features(model)
    perturbed = model.perturbed_features(z, target)
    assert calls == used
    calls.clear()
    h = model.classifier_outputs(z, target)
    assert calls == used
    plain = torch.matmul(model.aux.classifier.unsqueeze(1), z.flatten(-2))  # W_k z, [K, B, C, hw]
    for k, name in enumerate(owners):
        torch.testing.assert_close(perturbed[k], factors[name] * z)
        torch.testing.assert_close(h[k], factors[name] * plain[k])


def test_registration_rejects_clashes_and_kinds_it_cannot_apply() -> None:
    class Duplicate(SpatialMaskPerturbation):
        name = "cutout"
        count_field = "cutout_twice"

        def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
            return torch.ones(n, inputs.z.shape[0], 1, 1, 1)

    class NoKind(Perturbation):
        name = "no_kind"
        count_field = "no_kind"
        fold = "copies"

        def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
            return inputs.z.unsqueeze(0).expand(n, -1, -1, -1, -1)

    with pytest.raises(ValueError, match="clashes"):
        register_perturbation(Duplicate)
    with pytest.raises(TypeError, match="must derive from"):
        register_perturbation(NoKind)
    assert [p.name for p in registered_perturbations()] == BUILTIN
    with pytest.raises(KeyError, match="unknown perturbation 'no_kind'; registered: vat, dropout"):
        get_perturbation("no_kind")


def test_a_type_without_its_config_field_is_reported_by_name(toy: Perturbation) -> None:
    with pytest.raises(TypeError, match="perturbations.toy"):
        PerturbationsConfig().counts  # noqa: B018


@pytest.mark.parametrize(
    ("shape", "size"), [((2, 21, 128, 128), (16, 16)), ((3, 5, 97, 75), (13, 10)), ((1, 3, 40, 24), (7, 9))]
)
def test_foreground_is_the_full_resolution_argmax_nearest_resized(
    shape: tuple[int, ...], size: tuple[int, int]
) -> None:
    """The mask takes the argmax after resizing the scores (fewer pixels); it equals the reference's order, the
    argmax at full resolution and then a nearest resize of the labels, ties and non-integer scales included."""
    g = torch.Generator().manual_seed(0)
    scores = torch.softmax(torch.randn(*shape, generator=g), dim=1)
    scores[:, :, ::3] = scores[:, :, ::3].round(decimals=1)  # rows of tied scores: argmax keeps the first class
    labels = F.interpolate(scores.argmax(dim=1)[:, None].float(), size=size, mode="nearest")[:, 0].long()
    want = (~((labels == 1) | (labels == 2))).float()
    got = foreground_mask(scores, size, (1, 2))
    assert got.shape == (shape[0], *size) and torch.equal(got, want)
    assert 0 < got.sum() < got.numel()  # both foreground and background occur
