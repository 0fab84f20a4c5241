"""The base of the segmentation methods (supervised, CCT, AC) and the config sections of the encoder-decoder ones.

Not a method itself: it registers nothing. :class:`SegmentationMethod` is in ``method.py``; ``config.py`` holds the
``model``, ``data`` and ``eval`` sections that the supervised baseline and CCT share.
"""

from fewlabels.methods.segmentation.config import SegDataConfig, SegEvalConfig, SegModelConfig
from fewlabels.methods.segmentation.method import (
    LogitsFn,
    SegmentationMethod,
    build_segmentation_data,
    evaluate_segmentation,
    infer_probs,
    segmentation_figure,
)

__all__ = [
    "LogitsFn",
    "SegDataConfig",
    "SegEvalConfig",
    "SegModelConfig",
    "SegmentationMethod",
    "build_segmentation_data",
    "evaluate_segmentation",
    "infer_probs",
    "segmentation_figure",
]
