"""Networks: encoders (small CNN, dilated ResNet-18/34/50/101), segmentation heads and the segmentation model.

Create encoders by name with :func:`build_encoder`, segmentation models with :func:`build_segmentation_model`;
load local ImageNet weights with :func:`load_backbone_weights`.
"""

from fewlabels.models.backbones import (
    VALID_OUTPUT_STRIDES,
    BasicBlock,
    Bottleneck,
    Encoder,
    ResNet,
    SmallCNN,
    available_encoders,
    build_encoder,
    feature_shape,
    register_encoder,
)
from fewlabels.models.heads import PixelShuffleUpsample, PSPModule, UpsampleDecoder, icnr_
from fewlabels.models.pretrained import PretrainedWeightsError, load_backbone_weights, read_state_dict
from fewlabels.models.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ExportableSegmenter,
    SegmentationNet,
    build_segmentation_model,
    count_parameters,
    exportable_pad_to_multiple,
    reflect_pad_to_multiple,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VALID_OUTPUT_STRIDES",
    "BasicBlock",
    "Bottleneck",
    "Encoder",
    "ExportableSegmenter",
    "PSPModule",
    "PixelShuffleUpsample",
    "PretrainedWeightsError",
    "ResNet",
    "SegmentationNet",
    "SmallCNN",
    "UpsampleDecoder",
    "available_encoders",
    "build_encoder",
    "build_segmentation_model",
    "count_parameters",
    "exportable_pad_to_multiple",
    "feature_shape",
    "icnr_",
    "load_backbone_weights",
    "read_state_dict",
    "reflect_pad_to_multiple",
    "register_encoder",
]
