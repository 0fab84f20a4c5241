"""Configuration of ``seg-pretrain``: the encoder to warm-start, the images it sees and the contrastive task."""

from __future__ import annotations

from dataclasses import dataclass, field

from fewlabels.config import RunConfig, TrainConfig, fail
from fewlabels.methods.pretrain.views import smallest_overlap
from fewlabels.methods.segmentation.config import SegDataConfig, check_encoder

__all__ = ["DenseContrastConfig", "PretrainModelConfig", "SegPretrainConfig"]


@dataclass
class PretrainModelConfig:
    """The encoder (as a segmentation config names it) and the projection head used only while pretraining."""

    encoder: str = field(default="small_cnn", metadata={"help": "small_cnn, resnet18, resnet34, resnet50, resnet101"})
    output_stride: int = field(default=8, metadata={"help": "8, 16 or 32 (the segmentation config's)"})
    deep_stem: bool = field(default=False, metadata={"help": "PSPNet/CCT three-conv stem (ResNets)"})
    pretrained: str | None = field(default=None, metadata={"help": "start from these backbone weights"})
    projection_dim: int = field(default=128, metadata={"help": "channels of the contrasted embedding", "min": 1})
    hidden: int = field(default=256, metadata={"help": "channels of the projection head's hidden layer", "min": 1})

    def validate(self) -> None:
        check_encoder(self.encoder, self.output_stride)


@dataclass
class DenseContrastConfig:
    """Two views per image and the positions contrasted between them (:mod:`fewlabels.methods.pretrain.views`)."""

    crop_size: int = field(default=64, metadata={"help": "view side in pixels (a multiple of the output stride)"})
    max_shift: float = field(
        default=0.5, metadata={"help": "largest shift of view 2 against view 1, as a fraction of the crop", "min": 0}
    )
    positions: int = field(
        default=16,
        metadata={"help": "distinct overlapping cells contrasted per image (at most the smallest overlap)", "min": 1},
    )
    temperature: float = field(default=0.2, metadata={"help": "InfoNCE temperature", "gt": 0})
    jitter: float = field(default=0.4, metadata={"help": "brightness/contrast/saturation range (+-)", "min": 0})
    grayscale: float = field(default=0.2, metadata={"help": "probability that a view is turned grey", "min": 0})

    def validate(self) -> None:
        if self.max_shift > 1:
            fail("pretrain.max_shift", f"a fraction of the crop in [0, 1], got {self.max_shift}")
        if self.grayscale > 1:
            fail("pretrain.grayscale", f"a probability, got {self.grayscale}")


@dataclass
class SegPretrainConfig(RunConfig):
    """Self-supervised warm start of a segmentation encoder on the images of a ``data`` section (labels unused)."""

    method: str = "seg-pretrain"
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    pretrain: DenseContrastConfig = field(default_factory=DenseContrastConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=2000, batch_size=32, optimizer="adam", lr=1e-3, scheduler="poly")
    )

    def validate(self) -> None:
        if self.pretrain.crop_size % self.model.output_stride:
            fail(
                "pretrain.crop_size",
                f"a multiple of model.output_stride ({self.model.output_stride}), got {self.pretrain.crop_size}",
            )
        smallest = smallest_overlap(self.pretrain.crop_size, self.model.output_stride, self.pretrain.max_shift)
        if self.pretrain.positions > smallest:
            fail(
                "pretrain.positions",
                f"at most {smallest}: two views of crop {self.pretrain.crop_size} at output stride "
                f"{self.model.output_stride} may share only {smallest} cells (max_shift {self.pretrain.max_shift}); "
                f"got {self.pretrain.positions}",
            )
