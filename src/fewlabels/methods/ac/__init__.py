"""AC: autoregressive clustering for unsupervised segmentation (orderings as views + mutual information).

Importing the package registers the method ``ac`` (its ``model.mask_from=none`` variant is the IIC baseline).
"""

from fewlabels.methods.ac.config import ACConfig
from fewlabels.methods.ac.losses import (
    iic_joint,
    iic_loss,
    iic_segmentation_loss,
    information_loss,
    information_terms,
    segmentation_joint,
)
from fewlabels.methods.ac.method import ACMethod
from fewlabels.methods.ac.orderings import ORDERINGS

__all__ = [
    "ORDERINGS",
    "ACConfig",
    "ACMethod",
    "iic_joint",
    "iic_loss",
    "iic_segmentation_loss",
    "information_loss",
    "information_terms",
    "segmentation_joint",
]
