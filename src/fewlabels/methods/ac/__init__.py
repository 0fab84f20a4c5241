"""AC: autoregressive clustering for unsupervised segmentation (orderings as views + mutual information)."""

from fewlabels.methods.ac.losses import (
    iic_joint,
    iic_loss,
    iic_segmentation_loss,
    information_loss,
    information_terms,
    segmentation_joint,
)
from fewlabels.methods.ac.orderings import ORDERINGS

__all__ = [
    "ORDERINGS",
    "iic_joint",
    "iic_loss",
    "iic_segmentation_loss",
    "information_loss",
    "information_terms",
    "segmentation_joint",
]
