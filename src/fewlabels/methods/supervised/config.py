"""Configuration of segmentation runs, shared by the supervised baseline and CCT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fewlabels.config import RunConfig, TrainConfig, fail


@dataclass
class SegModelConfig:
    encoder: str = field(default="small_cnn", metadata={"help": "small_cnn, resnet18, resnet34, resnet50, resnet101"})
    output_stride: int = field(default=8, metadata={"help": "8, 16 or 32"})
    deep_stem: bool = field(default=False, metadata={"help": "PSPNet/CCT three-conv stem (ResNets)"})
    psp: bool = field(default=False, metadata={"help": "PSP pyramid pooling module after the encoder"})
    psp_channels: int = field(default=512, metadata={"min": 1})
    pretrained: str | None = field(default=None, metadata={"help": "local torchvision/timm backbone state dict"})
    backbone_lr_scale: float = field(default=0.1, metadata={"help": "backbone lr = train.lr x this", "min": 0})

    def validate(self) -> None:
        from fewlabels.config import did_you_mean
        from fewlabels.models import available_encoders

        names = available_encoders()
        if self.encoder not in names:
            fail(
                "model.encoder",
                f"unknown encoder {self.encoder!r}{did_you_mean(self.encoder, names)}; "
                f"valid choices: {', '.join(names)}",
            )
        if self.output_stride not in (8, 16, 32):
            fail("model.output_stride", f"must be 8, 16 or 32, got {self.output_stride}")


@dataclass
class SegDataConfig:
    dataset: Literal["scenes", "voc", "cityscapes", "folder"] = "scenes"
    root: str = field(default="", metadata={"help": "dataset folder (not needed for scenes)"})
    labeled: float = field(
        default=0.1,
        metadata={"help": "labeled training images: a count (>= 1) or a fraction in (0, 1)", "gt": 0},
    )
    labeled_list: str = field(default="", metadata={"help": "file of labeled image ids (overrides labeled)"})
    unlabeled_list: str = field(default="", metadata={"help": "file of unlabeled image ids (default: the rest)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the labeled/unlabeled draw"})
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = field(default=96, metadata={"min": 8})
    scale: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    num_classes: int = field(
        default=0, metadata={"help": "folder datasets: 0 = infer from classes.txt/masks", "min": 0}
    )
    scenes_train: int = field(default=2000, metadata={"help": "scenes: generated training images", "min": 2})
    scenes_val: int = field(default=200, metadata={"help": "scenes: generated validation images", "min": 1})
    scenes_size: int = field(default=96, metadata={"min": 16})

    def validate(self) -> None:
        if self.dataset != "scenes" and not self.root:
            fail("data.root", f"dataset {self.dataset!r} needs data.root=/path/to/{self.dataset}")
        if not 0 < self.scale[0] <= self.scale[1]:
            fail("data.scale", f"must be a range 0 < low <= high, got {list(self.scale)}")
        if self.labeled > 1 and self.labeled != int(self.labeled):
            fail("data.labeled", f"a count must be a whole number, got {self.labeled}")


@dataclass
class SegEvalConfig:
    batch_size: int = field(default=8, metadata={"min": 1})
    flip: bool = field(default=False, metadata={"help": "average with the horizontally flipped prediction"})
    scales: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "multi-scale inference"})
    max_images: int = field(default=0, metadata={"help": "evaluate on the first N images (0 = all)", "min": 0})


@dataclass
class SupervisedConfig(RunConfig):
    """Supervised-only segmentation: the encoder-decoder trained with cross-entropy on the labeled images."""

    method: str = "supervised"
    model: SegModelConfig = field(default_factory=SegModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    eval: SegEvalConfig = field(default_factory=SegEvalConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=8, lr=0.01))
