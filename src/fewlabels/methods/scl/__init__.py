"""SCL: spatial contrastive pre-training for few-shot classification, with its CE baseline, distillation,
ProtoNet and the episodic linear-probe evaluation.

Importing this package registers the methods ``scl``, ``scl-distill`` and ``protonet``; the ``fewlabels
fewshot-eval`` command lives in :mod:`fewlabels.commands.fewshot`.
"""

from fewlabels.data.episodes import EpisodeSampler
from fewlabels.methods.scl.distill import SCLDistillMethod
from fewlabels.methods.scl.fewshot_eval import fewshot_evaluate
from fewlabels.methods.scl.losses import contrast_distill, distill_kl, spatial_similarity, supcon_loss
from fewlabels.methods.scl.method import SCLMethod
from fewlabels.methods.scl.protonet import ProtoNetMethod

__all__ = [
    "EpisodeSampler",
    "ProtoNetMethod",
    "SCLDistillMethod",
    "SCLMethod",
    "contrast_distill",
    "distill_kl",
    "fewshot_evaluate",
    "spatial_similarity",
    "supcon_loss",
]
