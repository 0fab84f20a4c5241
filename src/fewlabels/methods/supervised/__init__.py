"""Supervised-only semantic segmentation baseline."""

from fewlabels.methods.supervised.config import SegDataConfig, SegEvalConfig, SegModelConfig, SupervisedConfig
from fewlabels.methods.supervised.method import SupervisedSegmentation

__all__ = ["SegDataConfig", "SegEvalConfig", "SegModelConfig", "SupervisedConfig", "SupervisedSegmentation"]
