"""CCT losses against the reference's golden vectors, and the batched form against K separate calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewlabels.methods.cct import (
    abce_loss,
    abce_threshold,
    batched_consistency_loss,
    consistency_weight,
    softmax_js_loss,
    softmax_kl_loss,
    softmax_mse_loss,
)

GOLDEN = Path(__file__).resolve().parents[3] / ".." / "shared" / "golden" / "cct_losses.npz"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    if not GOLDEN.is_file():
        pytest.skip(f"golden vectors not found at {GOLDEN} (the shared/golden folder beside the project)")
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def _close(value: torch.Tensor | float, expected: np.ndarray) -> None:
    got = value.detach().double().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_consistency_losses_match_the_reference(golden: dict[str, np.ndarray]) -> None:
    logits, target = _t(golden["logits"]), _t(golden["target_probs"])
    conf = float(golden["conf_threshold"])
    _close(softmax_mse_loss(logits, target), golden["softmax_mse"])
    _close(softmax_mse_loss(logits, target, conf_threshold=conf), golden["softmax_mse_conf"])
    _close(softmax_kl_loss(logits, target), golden["softmax_kl"])
    _close(softmax_kl_loss(logits, target, conf_threshold=conf), golden["softmax_kl_conf"])
    _close(softmax_js_loss(logits, target), golden["softmax_js"])


def test_supervised_cross_entropy_ignores_255(golden: dict[str, np.ndarray]) -> None:
    loss = F.cross_entropy(_t(golden["logits"]), _t(golden["labels"]), ignore_index=255)
    _close(loss, golden["ce_ignore255"])


def test_consistency_weight_follows_the_sigmoid_rampup(golden: dict[str, np.ndarray]) -> None:
    ramp = int(golden["cw_rampup_steps"])
    values = [consistency_weight(int(s), ramp) for s in golden["cw_steps"]]
    _close(np.array(values), golden["cw_values"])
    assert consistency_weight(5, 0, final_weight=7.0) == 7.0


def test_abce_threshold_and_loss_match_the_reference(golden: dict[str, np.ndarray]) -> None:
    logits, labels = _t(golden["logits"]), _t(golden["labels"])
    total, classes = int(golden["abce_total_steps"]), logits.shape[1]
    thresholds = [abce_threshold(int(s), total, classes) for s in golden["abce_steps"]]
    _close(np.array(thresholds), golden["abce_thresholds"])
    kept = int(golden["abce_min_kept_per_image"])
    losses = [
        abce_loss(logits, labels, abce_threshold(int(s), total, classes), min_kept_per_image=kept)
        for s in golden["abce_loss_steps"]
    ]
    _close(torch.stack(losses), golden["abce_losses"])


def test_abce_keeps_the_m_hardest_pixels_when_the_threshold_is_low() -> None:
    # 1 image, 4 pixels with true-class probabilities 0.1 < 0.2 < 0.3 < 0.4 (two classes), one ignored pixel.
    p = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    logits = torch.stack([torch.log(p), torch.log(1 - p)]).view(1, 2, 1, 5)
    labels = torch.tensor([[[0, 0, 0, 0, 255]]])
    ce = -torch.log(p)
    # threshold 0 -> cut at p_(1) = 0.2 -> only the hardest pixel (strictly below the cut)
    torch.testing.assert_close(abce_loss(logits, labels, 0.0, min_kept_per_image=1), ce[0])
    # min_kept larger than the valid count -> cut at the largest valid probability
    torch.testing.assert_close(abce_loss(logits, labels, 0.0, min_kept_per_image=10), ce[:3].mean())
    # all ignored -> 0, not NaN
    assert abce_loss(logits, torch.full_like(labels, 255), 0.5).item() == 0.0


@pytest.mark.parametrize(("kind", "conf"), [("mse", None), ("mse", 0.3), ("kl", None), ("kl", 0.3), ("js", None)])
def test_batched_loss_equals_mean_of_k_separate_losses(kind: str, conf: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    aux = torch.randn(4, 2, 3, 5, 6, generator=g, dtype=torch.float64)
    target = torch.softmax(2 * torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64), dim=1)
    single = {"mse": softmax_mse_loss, "kl": softmax_kl_loss, "js": softmax_js_loss}[kind]
    args = () if kind == "js" else (conf,)
    expected = torch.stack([single(a, target, *args) for a in aux]).mean()
    torch.testing.assert_close(batched_consistency_loss(aux, target, kind, conf), expected)


def test_confidence_mask_with_no_confident_pixel_gives_zero() -> None:
    logits = torch.randn(1, 4, 3, 3)
    uniform = torch.full((1, 4, 3, 3), 0.25)
    assert softmax_mse_loss(logits, uniform, conf_threshold=0.9).item() == 0.0
    assert softmax_kl_loss(logits, uniform, conf_threshold=0.9).item() == 0.0
