"""Self-supervised warm start of a segmentation encoder from the training images (``seg-pretrain``)."""

from fewlabels.methods.pretrain.config import SegPretrainConfig
from fewlabels.methods.pretrain.method import SegPretrain

__all__ = ["SegPretrain", "SegPretrainConfig"]
