"""CCT: cross-consistency training for semi-supervised semantic segmentation (Ouali et al., CVPR 2020).

Importing this package registers the ``cct`` method and ``cct-cam``, the CAM classifier of its weak labels.
The losses are pure functions (``losses.py``), the perturbations act on stacked feature copies (the ``perturbations``
package), the K auxiliary decoders are one module with stacked weights (``decoders.py``), and ``model.py`` puts them
together behind one forward."""

from fewlabels.methods.cct.cam import CCTCAMConfig, CCTCAMMethod
from fewlabels.methods.cct.config import CCTConfig, CCTLossConfig, CCTWeakConfig, PerturbationsConfig
from fewlabels.methods.cct.decoders import StackedUpsampleDecoders
from fewlabels.methods.cct.losses import (
    abce_loss,
    abce_threshold,
    batched_consistency_loss,
    consistency_weight,
    pairwise_variance_loss,
    softmax_js_loss,
    softmax_kl_loss,
    softmax_mse_loss,
)
from fewlabels.methods.cct.method import CCTMethod
from fewlabels.methods.cct.model import CCTLossSettings, CCTModel

__all__ = [
    "CCTCAMConfig",
    "CCTCAMMethod",
    "CCTConfig",
    "CCTLossConfig",
    "CCTLossSettings",
    "CCTMethod",
    "CCTModel",
    "CCTWeakConfig",
    "PerturbationsConfig",
    "StackedUpsampleDecoders",
    "abce_loss",
    "abce_threshold",
    "batched_consistency_loss",
    "consistency_weight",
    "pairwise_variance_loss",
    "softmax_js_loss",
    "softmax_kl_loss",
    "softmax_mse_loss",
]
