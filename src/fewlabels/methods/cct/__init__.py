"""CCT: cross-consistency training for semi-supervised semantic segmentation (Ouali et al., CVPR 2020)."""

from fewlabels.methods.cct.losses import (
    abce_loss,
    abce_threshold,
    batched_consistency_loss,
    consistency_weight,
    softmax_js_loss,
    softmax_kl_loss,
    softmax_mse_loss,
)

__all__ = [
    "abce_loss",
    "abce_threshold",
    "batched_consistency_loss",
    "consistency_weight",
    "softmax_js_loss",
    "softmax_kl_loss",
    "softmax_mse_loss",
]
