"""Supervised-only semantic segmentation baseline (its config sections are :mod:`fewlabels.methods.segmentation`'s)."""

from fewlabels.methods.supervised.config import SupervisedConfig
from fewlabels.methods.supervised.method import SupervisedSegmentation

__all__ = ["SupervisedConfig", "SupervisedSegmentation"]
