"""``cct-cam``: the CAM classifier of CCT's weak labels, trained by the engine like every other method.

The reference (yassouali/CCT ``pseudo_labels/``, after IRN's ``train_cam``) trains a ResNet-50 classifier with
multi-label soft-margin loss (the mean binary cross-entropy over classes), SGD lr 0.1 with the new classifier layer
at 10x, momentum 0.9, weight decay 1e-4, a poly schedule, 5 epochs, batch 16, random 512 crops and horizontal flips;
those are this method's defaults. The images are the unlabeled images of a segmentation ``data`` section (the CCT
run's), their image-level labels a JSON file (``cam.image_labels``). Once trained, ``fewlabels cct-pseudo-labels``
turns the run's classifier into pseudo-label PNGs (:func:`fewlabels.methods.cct.weak.write_pseudo_labels`) with the
run's ``cam`` and ``crf`` settings.

Differences from the reference, kept on purpose: the crop is never larger than the longest image side (a 512 crop of
a 96 px image would be mostly padding); the backbone's batch norm trains (the reference freezes it and its stem, and
stops the gradient below its third stage, which suits an ImageNet ResNet-50 but not a network trained from scratch);
the reference's random rescale of the long side to [320, 640] is not applied.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.config import RunConfig, TrainConfig, build_config, fail, to_dict
from fewlabels.data.base import DataError, fill_batch
from fewlabels.data.segmentation import SegmentationData
from fewlabels.methods.base import Method, Source, StepOutput
from fewlabels.methods.cct.config import CCTConfig
from fewlabels.methods.cct.crf import CRFSettings
from fewlabels.methods.cct.weak import (
    CAMClassifier,
    CAMImages,
    background_class,
    image_id_and_side,
    read_image_labels,
)
from fewlabels.methods.segmentation.config import SegDataConfig, check_encoder
from fewlabels.methods.segmentation.method import build_segmentation_data
from fewlabels.parallel import global_mean
from fewlabels.registry import register_method

__all__ = ["CAMModelConfig", "CAMSection", "CCTCAMConfig", "CCTCAMMethod", "cam_config_from_cct"]


@dataclass
class CAMModelConfig:
    """The classifier: an encoder, global average pooling, a 1x1 convolution without bias (one map per class)."""

    encoder: str = field(default="resnet50", metadata={"help": "small_cnn, resnet18, ..., resnet50 (the reference)"})
    output_stride: int = field(default=16, metadata={"help": "8, 16 (the reference) or 32"})
    deep_stem: bool = field(default=False, metadata={"help": "PSPNet/CCT three-conv stem (ResNets)"})
    pretrained: str | None = field(default=None, metadata={"help": "local torchvision/timm backbone state dict"})
    classifier_lr_scale: float = field(
        default=10.0, metadata={"help": "classifier lr = train.lr x this (the reference: 10)", "min": 0}
    )

    def validate(self) -> None:
        check_encoder(self.encoder, self.output_stride)


@dataclass
class CAMSection:
    """Image-level labels, training crops, and how the CAMs become pseudo-labels."""

    image_labels: str = field(
        default="", metadata={"help": "JSON {image id: [class, ...]} of the unlabeled images (required to train)"}
    )
    crop_size: int = field(
        default=512,
        metadata={"help": "training crop side (the reference: 512), at most the longest image side", "min": 8},
    )
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips of the training crops"})
    scales: list[float] = field(
        default_factory=lambda: [1.0, 0.5, 1.5, 2.0], metadata={"help": "CAM scales summed per image"}
    )
    flip: bool = field(default=True, metadata={"help": "add each scale's flipped CAM (the reference does)"})
    fg_threshold: float = field(default=0.30, metadata={"help": "normalised CAM above which a class is kept"})
    bg_threshold: float = field(default=0.05, metadata={"help": "every CAM at most this: background"})
    background_class: int = field(
        default=-1,
        metadata={"help": "class of unclaimed pixels (-1: the first class that is not a thing class, else 0)"},
    )

    def validate(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            fail("cam.scales", f"needs at least one positive scale, got {self.scales}")
        if not 0 <= self.bg_threshold <= self.fg_threshold <= 1:
            fail(
                "cam.bg_threshold",
                f"thresholds must satisfy 0 <= bg_threshold <= fg_threshold <= 1, got {self.bg_threshold} and "
                f"{self.fg_threshold}",
            )
        if self.background_class < -1:
            fail("cam.background_class", f"a class index or -1 (automatic), got {self.background_class}")


@dataclass
class CCTCAMConfig(RunConfig):
    """The CAM classifier of CCT's weak labels (``fewlabels cct-pseudo-labels`` writes its pseudo-labels)."""

    method: str = "cct-cam"
    model: CAMModelConfig = field(default_factory=CAMModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    cam: CAMSection = field(default_factory=CAMSection)
    crf: CRFSettings = field(default_factory=CRFSettings)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=5.0, batch_size=16, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=1e-4, scheduler="poly"
        )
    )


@register_method
class CCTCAMMethod(Method[CCTCAMConfig]):
    """Multi-label classifier on the unlabeled images of ``data`` with their image-level labels (``cam``)."""

    name = "cct-cam"
    description = "CAM classifier for CCT's weak labels (image-level labels -> pseudo-labels)"
    config_class = CCTCAMConfig

    @cached_property
    def data(self) -> SegmentationData:
        return build_segmentation_data(self.config.data)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def background(self) -> int:
        """The background class of the pseudo-labels (``cam.background_class``, or the automatic choice)."""
        chosen = self.config.cam.background_class
        data = self.data
        if chosen >= data.num_classes:
            raise DataError(f"cam.background_class={chosen} but the dataset has {data.num_classes} classes")
        return background_class([chosen] if chosen >= 0 else [], data.num_classes, data.thing_classes)

    def build_model(self) -> nn.Module:
        m = self.config.model
        return CAMClassifier(m.encoder, self.num_classes, m.output_stride, m.pretrained, m.deep_stem)

    def crop_size(self) -> int:
        """``cam.crop_size``, but never more than the longest side of the images (read from their headers)."""
        images = self.data.unlabeled
        longest = max((image_id_and_side(images, i)[1] for i in range(len(images))), default=1)
        return min(self.config.cam.crop_size, longest)

    def train_sources(self) -> dict[str, Source]:
        cam = self.config.cam
        if not cam.image_labels:
            raise DataError(
                "cct-cam trains on image-level labels: set cam.image_labels=FILE.json ({image id: [class, ...]}) "
                "or use `fewlabels cct-pseudo-labels CONFIG --image-labels FILE.json`"
            )
        images = self.data.unlabeled
        if len(images) == 0:
            raise DataError("the data section has no unlabeled images to train the CAM classifier on")
        ids = [image_id_and_side(images, i)[0] for i in range(len(images))]
        labels = read_image_labels(cam.image_labels, ids, self.num_classes)
        batch = self.config.train.batch_size
        dataset = CAMImages(images, labels, self.crop_size(), cam.hflip)
        return {"images": Source(fill_batch(dataset, batch), batch)}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        assert isinstance(model, CAMClassifier)
        return [
            {"params": [p for p in model.encoder.parameters() if p.requires_grad]},
            {"params": list(model.classifier.parameters()), "lr_scale": self.config.model.classifier_lr_scale},
        ]

    def training_step(self, model: nn.Module, batch: dict, step: int, total_steps: int) -> StepOutput:
        src = batch["images"]
        logits = model(src["image"]).float()
        targets = src["labels"].float()
        total = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
        # The reference's multilabel soft margin loss: the mean BCE over classes and images of the global batch.
        return StepOutput(global_mean(total, torch.tensor(float(targets.numel()), device=total.device)))


def cam_config_from_cct(
    config: CCTConfig, image_labels: str, encoder: str = "", values: dict[str, Any] | None = None
) -> CCTCAMConfig:
    """The ``cct-cam`` config that trains the CAM classifier of a CCT config: its ``data`` section, ``seed``,
    ``output_dir`` and ``train.device``; its background class (``perturbations.background_classes``); and its
    encoder with ``model.deep_stem`` and ``model.pretrained`` (so that the deep-stem ResNet-50 weights of the VOC
    configs load into a deep-stem network), unless ``encoder`` names another one, which starts from scratch (a
    warning says so when the config has weights). ``values`` are further nested keys (``{"train": {"steps": 2}}``).
    """
    model_cfg = config.model
    name = encoder or model_cfg.encoder
    model: dict[str, Any] = {"encoder": name}
    if name == model_cfg.encoder:
        model.update(deep_stem=model_cfg.deep_stem, pretrained=model_cfg.pretrained)
    elif model_cfg.pretrained:
        warnings.warn(
            f"the CAM classifier's encoder {name!r} is not the config's {model_cfg.encoder!r}: model.pretrained "
            f"({model_cfg.pretrained}) is not loaded into it; it starts from scratch",
            stacklevel=2,
        )
    chosen = config.perturbations.background_classes
    data: dict[str, Any] = {
        "method": "cct-cam",
        "seed": config.seed,
        "output_dir": config.output_dir,
        "data": to_dict(config.data),
        "model": model,
        "cam": {"image_labels": str(image_labels), "background_class": int(chosen[0]) if chosen else -1},
        "train": {"device": config.train.device},
    }
    for section, keys in (values or {}).items():
        if isinstance(keys, dict):
            data.setdefault(section, {}).update(keys)
        else:
            data[section] = keys
    return build_config(CCTCAMConfig, data)
