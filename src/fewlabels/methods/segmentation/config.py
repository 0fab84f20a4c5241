"""Configuration sections of the segmentation methods that train an encoder-decoder (the supervised baseline and
CCT): the network, the data and the evaluation protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

from fewlabels.config import fail
from fewlabels.data.base import DataError
from fewlabels.data.registry import get_dataset
from fewlabels.data.segmentation import SegmentationOptions

__all__ = ["ID_LIST_DATASETS", "SegDataConfig", "SegEvalConfig", "SegModelConfig", "check_encoder"]

#: the segmentation datasets whose labeled/unlabeled images can be named by id lists (data.labeled_list)
ID_LIST_DATASETS = ("voc", "seg-folder")


def check_encoder(encoder: str, output_stride: int) -> None:
    """ConfigError unless ``encoder`` is a registered encoder and ``output_stride`` one of 8, 16, 32."""
    from fewlabels.config import did_you_mean
    from fewlabels.models import available_encoders

    names = available_encoders()
    if encoder not in names:
        fail(
            "model.encoder",
            f"unknown encoder {encoder!r}{did_you_mean(encoder, names)}; valid choices: {', '.join(names)}",
        )
    if output_stride not in (8, 16, 32):
        fail("model.output_stride", f"must be 8, 16 or 32, got {output_stride}")


@dataclass
class SegModelConfig:
    encoder: str = field(default="small_cnn", metadata={"help": "small_cnn, resnet18, resnet34, resnet50, resnet101"})
    output_stride: int = field(default=8, metadata={"help": "8, 16 or 32"})
    deep_stem: bool = field(default=False, metadata={"help": "PSPNet/CCT three-conv stem (ResNets)"})
    psp: bool = field(default=False, metadata={"help": "PSP pyramid pooling module after the encoder"})
    psp_channels: int = field(default=512, metadata={"min": 1})
    pretrained: str | None = field(default=None, metadata={"help": "local torchvision/timm backbone state dict"})
    backbone_lr_scale: float | None = field(
        default=None,
        metadata={
            "help": "encoder lr = train.lr x this; default: 0.1 for an encoder loaded from model.pretrained (the "
            "reference), 1 for one trained from scratch",
            "min": 0,
        },
    )

    def validate(self) -> None:
        check_encoder(self.encoder, self.output_stride)

    @property
    def encoder_lr_scale(self) -> float:
        """The encoder's lr multiplier: ``backbone_lr_scale`` when set, else 0.1 for pretrained weights (they are
        fine-tuned gently, as in the reference) and 1.0 for a randomly initialised encoder (at 0.1 it learns ten
        times slower than its decoder: on the `scenes` dev instance, 2 % labels, supervised-only reached 0.710 mIoU
        in 3,000 steps at 0.1 and 0.826 at 1.0)."""
        if self.backbone_lr_scale is not None:
            return self.backbone_lr_scale
        return 0.1 if self.pretrained else 1.0


@dataclass
class SegDataConfig:
    dataset: str = field(
        default="scenes",
        metadata={"help": "a segmentation dataset: scenes, voc, cityscapes, seg-folder (`fewlabels data check` names)"},
    )
    root: str = field(default="", metadata={"help": "dataset folder (not needed for scenes)"})
    labeled: float | None = field(
        default=None,
        metadata={
            "help": "labeled training images: a count (>= 1) or a fraction in (0, 1); default: 0.1 of a dataset's "
            "training split, every masked image of a seg-folder",
            "gt": 0,
        },
    )
    labeled_list: str = field(
        default="", metadata={"help": "file of labeled image ids (voc, seg-folder; replaces labeled)"}
    )
    unlabeled_list: str = field(
        default="", metadata={"help": "file of unlabeled image ids (with labeled_list; default: the rest)"}
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the labeled/unlabeled draw"})
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = field(default=96, metadata={"min": 8})
    scale: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    num_classes: int = field(
        default=0, metadata={"help": "folder datasets: 0 = infer from classes.txt/masks", "min": 0}
    )
    scenes_train: int = field(
        default=2000, metadata={"help": "generated datasets (scenes, digit-mosaics): training images", "min": 2}
    )
    scenes_val: int = field(default=200, metadata={"help": "generated datasets: validation images", "min": 1})
    scenes_size: int = field(default=96, metadata={"help": "generated datasets: image side", "min": 16})
    scenes_seed: int = field(
        default=0,
        metadata={
            "help": "generated datasets: the generator's seed; another seed is another instance (e.g. a dev "
            "instance to tune on)",
            "min": 0,
        },
    )

    def validate(self) -> None:
        try:
            spec = get_dataset(self.dataset, "segmentation")
        except DataError as err:
            fail("data.dataset", str(err))
        if spec.root != "none" and not self.root:
            fail("data.root", f"dataset {self.dataset!r} needs data.root=/path/to/{self.dataset}")
        if not 0 < self.scale[0] <= self.scale[1]:
            fail("data.scale", f"must be a range 0 < low <= high, got {list(self.scale)}")
        if self.labeled is not None and self.labeled > 1 and self.labeled != int(self.labeled):
            fail("data.labeled", f"a count must be a whole number, got {self.labeled}")
        if (self.labeled_list or self.unlabeled_list) and spec.name not in ID_LIST_DATASETS:
            key = "data.labeled_list" if self.labeled_list else "data.unlabeled_list"
            fail(
                key,
                f"id lists are not supported by dataset {spec.name!r} (only {', '.join(ID_LIST_DATASETS)}); "
                "choose the labeled images with data.labeled and data.split_seed",
            )
        if self.unlabeled_list and not self.labeled_list:
            fail("data.unlabeled_list", "needs data.labeled_list (the unlabeled images are the rest of a draw)")

    def options(self) -> SegmentationOptions:
        """What the dataset's builder reads from this section."""
        labeled = self.labeled
        if labeled is None:  # the dataset's default: a seg-folder labels every masked image (0), others 0.1
            labeled = 0.0 if get_dataset(self.dataset, "segmentation").name == "seg-folder" else 0.1
        return SegmentationOptions(
            root=self.root,
            labeled=labeled,
            labeled_list=self.labeled_list,
            unlabeled_list=self.unlabeled_list,
            split_seed=self.split_seed,
            train_split=self.train_split,
            val_split=self.val_split,
            num_classes=self.num_classes,
            crop_size=self.crop_size,
            scale=(self.scale[0], self.scale[1]),
            hflip=self.hflip,
            scenes_train=self.scenes_train,
            scenes_val=self.scenes_val,
            scenes_size=self.scenes_size,
            scenes_seed=self.scenes_seed,
        )


@dataclass
class SegEvalConfig:
    batch_size: int = field(default=8, metadata={"min": 1})
    flip: bool = field(default=False, metadata={"help": "average with the horizontally flipped prediction"})
    scales: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "multi-scale inference"})
    max_images: int = field(default=0, metadata={"help": "evaluate on the first N images (0 = all)", "min": 0})
