from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewlabels.methods.scl import contrast_distill, distill_kl, spatial_similarity, supcon_loss

GOLDEN = Path(__file__).resolve().parents[3] / ".." / "shared" / "golden" / "scl_losses.npz"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    if not GOLDEN.is_file():
        pytest.skip(f"golden vectors not found at {GOLDEN}")
    return {k: torch.from_numpy(np.asarray(v)) for k, v in np.load(GOLDEN).items()}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-5, atol=1e-6)


def _global_similarity(g: dict[str, torch.Tensor]) -> torch.Tensor:
    f = F.normalize(g["global_features"], dim=1)
    return f @ f.T


def test_supcon_on_global_features_matches_reference(golden):
    loss = supcon_loss(_global_similarity(golden), golden["labels"], float(golden["inverse_temperature"]))
    _close(loss, golden["supcon_global"])


def test_self_supervised_supcon_works_without_labels(golden):
    loss = supcon_loss(_global_similarity(golden), None, float(golden["inverse_temperature"]))
    _close(loss, golden["supcon_global_selfsup"])


@pytest.mark.parametrize("aggregation", ["mean", "sum", "max", "logsum"])
def test_spatial_similarity_and_its_supcon_match_reference(golden, aggregation):
    sim = spatial_similarity(
        golden["q"], golden["k"], golden["v"], aggregation=aggregation, lse_lambda=float(golden["lse_lambda"])
    )
    _close(sim, golden[f"spatial_similarity_{aggregation}"])
    _close(supcon_loss(sim, golden["labels"]), golden[f"supcon_spatial_{aggregation}"])


def test_distillation_losses_match_reference(golden):
    kl = distill_kl(golden["student_logits"], golden["teacher_logits"], float(golden["distill_T"]))
    _close(kl, golden["distill_kl"])
    _close(contrast_distill(golden["distill_f1"], golden["distill_f2"]), golden["contrast_distill"])


def test_spatial_similarity_is_symmetric_and_bounded_for_one_set():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    sim = spatial_similarity(q, k, v)
    torch.testing.assert_close(sim, sim.T)
    assert sim.abs().max() <= 2.0 + 1e-12
    # a sample aligned with itself need not score 2 (attention mixes positions), but stays within [-2, 2]
    assert sim.shape == (6, 6)


def test_spatial_similarity_of_two_sets_has_shape_b_by_a_and_matches_the_joint_matrix():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(5, 4, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    joint = spatial_similarity(q, k, v)
    cross = spatial_similarity(q[:2], k[:2], v[:2], q_b=q[2:], k_b=k[2:], v_b=v[2:])
    assert cross.shape == (3, 2)
    torch.testing.assert_close(cross, joint[2:, :2])


def test_self_supervised_positives_are_exactly_the_two_views():
    # With a similarity of +1 only between the two views of each image and -1 elsewhere, the self-supervised
    # loss equals -log softmax of the single positive against all other entries; any other positive set
    # differs.
    n, t = 3, 10.0
    sim = -torch.ones(2 * n, 2 * n, dtype=torch.float64)
    idx = torch.arange(n)
    sim[idx, idx + n] = 1.0
    sim[idx + n, idx] = 1.0
    expected = -(t - torch.logsumexp(torch.tensor([t] + [-t] * (2 * n - 2), dtype=torch.float64), 0))
    _close(supcon_loss(sim, None, t), expected)
    # every label distinct gives the same positives as self-supervision
    _close(supcon_loss(sim, torch.arange(n), t), expected)
    # sharing a label adds positives and changes the value
    assert not torch.isclose(supcon_loss(sim, torch.tensor([0, 0, 1]), t), expected)


def test_supcon_rejects_a_non_square_similarity():
    with pytest.raises(ValueError, match="square"):
        supcon_loss(torch.zeros(4, 3))
