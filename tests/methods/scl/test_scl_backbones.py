import pytest
import torch

from fewlabels.methods.scl.backbones import DropBlock, build_backbone, dropblock_gamma


def _expected_drop_fraction(feature: int, block: int, gamma: float) -> float:
    # A position (i, j) is dropped unless every seed whose block covers it is zero.
    valid = feature - block + 1
    cover = [min(i, valid - 1) - max(0, i - block + 1) + 1 for i in range(feature)]
    total = sum(1 - (1 - gamma) ** (ci * cj) for ci in cover for cj in cover)
    return total / feature**2


@pytest.mark.parametrize("feature,block", [(10, 5), (5, 5), (4, 2)])
def test_dropblock_drops_the_expected_fraction_after_the_ramp(feature, block):
    torch.manual_seed(0)
    drop = DropBlock(drop_rate=0.1, block_size=block, ramp_steps=10)
    drop.batches_seen.fill_(100)
    x = torch.ones(64, 64, feature, feature)
    out = drop.train()(x)
    dropped = (out == 0).float().mean().item()
    gamma = dropblock_gamma(0.9, block, feature)
    assert dropped == pytest.approx(_expected_drop_fraction(feature, block, gamma), abs=0.01)
    assert dropped == pytest.approx(0.1, abs=0.03)
    # kept activations are rescaled so that the mean is preserved
    assert out.mean().item() == pytest.approx(1.0, abs=1e-4)


def test_dropblock_gamma_follows_the_reference_formula():
    assert dropblock_gamma(0.9, 5, 5) == pytest.approx(0.1)
    assert dropblock_gamma(0.9, 5, 10) == pytest.approx(0.1 / 25 * 100 / 36)


def test_dropblock_keep_probability_ramps_from_one_to_the_floor():
    drop = DropBlock(drop_rate=0.1, block_size=5, ramp_steps=40_000)
    assert drop.keep_prob() == 1.0
    drop.batches_seen.fill_(20_000)
    assert drop.keep_prob() == pytest.approx(0.95)
    drop.batches_seen.fill_(80_000)
    assert drop.keep_prob() == pytest.approx(0.9)


def test_dropblock_is_identity_in_eval_mode_and_does_not_advance_the_ramp():
    drop = DropBlock(0.1, 5).eval()
    x = torch.randn(2, 3, 10, 10)
    assert torch.equal(drop(x), x)
    assert int(drop.batches_seen) == 0


def test_resnet12_shapes_and_parameter_count():
    model = build_backbone("resnet12", image_size=84).eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(12.4e6, rel=0.01)
    with torch.no_grad():
        spatial, pooled = model(torch.randn(1, 3, 84, 84))
    assert spatial.shape == (1, 640, 5, 5) and pooled.shape == (1, 640)
    torch.testing.assert_close(pooled, spatial.mean(dim=(2, 3)))
    small = build_backbone("resnet12", image_size=32)
    assert small.layers[3].drop.block_size == 2
    with torch.no_grad():
        spatial, _ = small.eval()(torch.randn(1, 3, 32, 32))
    assert spatial.shape == (1, 640, 2, 2)


def test_resnet12_uses_dropout_in_blocks_one_two_and_dropblock_in_three_four():
    model = build_backbone("resnet12")
    kinds = [type(block.drop).__name__ for block in model.layers]
    assert kinds == ["Dropout", "Dropout", "DropBlock", "DropBlock"]


def test_conv4_and_resnet18_shapes():
    with torch.no_grad():
        spatial, pooled = build_backbone("conv4").eval()(torch.randn(1, 3, 84, 84))
        assert spatial.shape == (1, 64, 5, 5) and pooled.shape == (1, 64)
        spatial, pooled = build_backbone("resnet18").eval()(torch.randn(1, 3, 84, 84))
        assert spatial.shape == (1, 512, 3, 3) and pooled.shape == (1, 512)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="resnet12, conv4, resnet18"):
        build_backbone("resnet13")
