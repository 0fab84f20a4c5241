"""IIC losses: golden vectors of the reference (xu-ji/IIC), range, and learning on a separable toy problem."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fewlabels.methods.ac import iic_loss, iic_segmentation_loss
from fewlabels.methods.ac.losses import information_loss, information_terms, segmentation_joint

GOLDEN = Path(__file__).resolve().parents[3] / ".." / "shared" / "golden" / "iic.npz"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to oversubscribed shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    if not GOLDEN.is_file():
        pytest.skip(f"golden vectors not found at {GOLDEN} (expected ../shared/golden beside the project)")
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("lamb", [1.0, 1.5])
def test_iic_loss_matches_reference(golden, lamb):
    p1, p2 = torch.from_numpy(golden["p1"]), torch.from_numpy(golden["p2"])
    got = iic_loss(p1, p2, lamb=lamb)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.item(), golden[f"cluster_loss_lamb{lamb}"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("collapsed", [True, False])
@pytest.mark.parametrize("lamb", [1.0, 1.5])
@pytest.mark.parametrize("t", [0, 1, 2])
def test_segmentation_loss_matches_reference(golden, t, lamb, collapsed):
    p1, p2 = torch.from_numpy(golden["seg_p1"]), torch.from_numpy(golden["seg_p2"])
    key = f"seg_loss_{'' if collapsed else 'uncollapsed_'}T{t}_lamb{lamb}"
    got = iic_segmentation_loss(p1, p2, displacement=t, lamb=lamb, collapsed=collapsed)
    np.testing.assert_allclose(got.item(), golden[key], rtol=1e-5, atol=1e-6)
    got32 = iic_segmentation_loss(p1.float(), p2.float(), displacement=t, lamb=lamb, collapsed=collapsed)
    np.testing.assert_allclose(got32.item(), golden[key], rtol=1e-4, atol=1e-6)


def test_collapsed_joint_equals_explicit_sum_over_shifts():
    torch.manual_seed(0)
    p1 = torch.rand(2, 4, 6, 5, dtype=torch.float64).softmax(1)
    p2 = torch.rand(2, 4, 6, 5, dtype=torch.float64).softmax(1)
    t = 2
    padded = torch.nn.functional.pad(p2, (t, t, t, t))
    joint = torch.zeros(4, 4, dtype=torch.float64)
    for dy in range(-t, t + 1):
        for dx in range(-t, t + 1):
            shifted = padded[:, :, t + dy : t + dy + 6, t + dx : t + dx + 5]
            joint += torch.einsum("bihw,bjhw->ij", p1, shifted)
    joint = (joint + joint.T) / 2
    joint /= joint.sum()
    torch.testing.assert_close(segmentation_joint(p1, p2, t, collapsed=True), joint)
    per_shift = segmentation_joint(p1, p2, t, collapsed=False)
    assert per_shift.shape == (25, 4, 4)
    torch.testing.assert_close(per_shift.sum(dim=(1, 2)), torch.ones(25, dtype=torch.float64))


def test_loss_range_and_terms_at_the_optimum_and_at_collapse():
    k = 5
    agree = torch.eye(k, dtype=torch.float64).repeat(4, 1)  # both views agree, clusters used equally
    for lamb in (1.0, 1.5):
        assert iic_loss(agree, agree, lamb).item() == pytest.approx(-(2 * lamb - 1) * math.log(k))
    terms = information_terms(segmentation_joint(agree.T.reshape(1, k, 4, k), agree.T.reshape(1, k, 4, k), 0))
    assert terms["mutual_information"].item() == pytest.approx(math.log(k))
    assert terms["marginal_entropy"].item() == pytest.approx(math.log(k))
    assert terms["conditional_entropy"].item() == pytest.approx(0.0, abs=1e-12)
    collapsed = torch.zeros(8, k, dtype=torch.float64)
    collapsed[:, 0] = 1
    assert iic_loss(collapsed, collapsed).item() == pytest.approx(0.0, abs=1e-12)
    # independent views: MI = 0, the loss with lamb = 1 is 0 and the conditional entropy equals the marginal
    # one
    joint = torch.full((k, k), 1.0 / k**2, dtype=torch.float64)
    assert information_loss(joint, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    t = information_terms(joint)
    assert t["conditional_entropy"].item() == pytest.approx(t["marginal_entropy"].item())


def test_mask_removes_pixels_from_the_joint():
    torch.manual_seed(1)
    p1 = torch.rand(1, 3, 4, 4, dtype=torch.float64).softmax(1)
    p2 = torch.rand(1, 3, 4, 4, dtype=torch.float64).softmax(1)
    mask = torch.zeros(1, 4, 4)
    mask[:, :, :2] = 1
    got = segmentation_joint(p1, p2, 0, mask=mask)
    want = segmentation_joint(p1[..., :2].contiguous(), p2[..., :2].contiguous(), 0)
    torch.testing.assert_close(got, want)


def test_loss_is_finite_and_decreases_on_separable_toy_problem():
    torch.manual_seed(0)
    # two well separated blobs; two noisy views of each point; a linear clusterer must find them
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    labels = torch.randint(0, 2, (256,))
    x = centers[labels] + 0.5 * torch.randn(256, 2)
    clusterer = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(clusterer.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        v1 = x + 0.3 * torch.randn_like(x)
        v2 = x + 0.3 * torch.randn_like(x)
        loss = iic_loss(clusterer(v1).softmax(1), clusterer(v2).softmax(1))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    assert losses[-1] == pytest.approx(-math.log(2), abs=0.1)
    pred = clusterer(x).argmax(1)
    agreement = (pred == labels).float().mean().item()
    assert max(agreement, 1 - agreement) > 0.97
