"""SCL: spatial contrastive pre-training for few-shot classification, with its CE baseline, distillation, ProtoNet
and the episodic linear-probe evaluation."""

from fewlabels.methods.scl.losses import contrast_distill, distill_kl, spatial_similarity, supcon_loss

__all__ = ["contrast_distill", "distill_kl", "spatial_similarity", "supcon_loss"]
