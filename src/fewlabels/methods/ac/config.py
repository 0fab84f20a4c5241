"""Configuration of AC runs (and of the IIC baseline: the same method with ``model.mask_from=none``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fewlabels.config import RunConfig, TrainConfig, fail
from fewlabels.data.base import DataError
from fewlabels.data.registry import DatasetSpec, get_dataset

__all__ = ["ACConfig", "ACDataConfig", "ACEvalConfig", "ACLossConfig", "ACModelConfig", "ACViewsConfig"]


@dataclass
class ACModelConfig:
    mask_from: Literal["input", "features", "decoder", "none"] = field(
        default="features",
        metadata={
            "help": "where the orderings apply: input (F1), features (F2, default), decoder (F3), "
            "none (F4 = the IIC baseline, views from augmentations)"
        },
    )
    widths: list[int] = field(default_factory=lambda: [32, 64], metadata={"help": "encoder residual block widths"})
    decoder_blocks: int = field(default=1, metadata={"help": "residual blocks after the encoder", "min": 0})
    k: int = field(default=0, metadata={"help": "clusters of the main head (0 = the dataset's classes)", "min": 0})
    k_over: int = field(default=0, metadata={"help": "over-clustering head clusters (0 = none)", "min": 0})
    attention: bool = field(default=False, metadata={"help": "causal self-attention block after the masked part"})
    attention_heads: int = field(default=4, metadata={"min": 1})
    vertical_fraction: float = field(
        default=0.5, metadata={"help": "share of V (rows-above) channels in masked layers", "gt": 0, "max": 1}
    )
    sobel: bool = field(
        default=False,
        metadata={"help": "IIC's Sobel input: the grey image's Sobel x/y replace the RGB channels (not with F1)"},
    )
    sobel_keep: bool = field(
        default=False, metadata={"help": "with sobel: keep the RGB channels before the Sobel ones (IIC include_rgb)"}
    )
    inference: Literal["ensemble", "plain"] = field(
        default="plain",
        metadata={
            "help": "evaluation/prediction: plain = the masks removed, one pass of the network as a standard "
            "segmentation model (the thesis' inference); ensemble = mean over the 8 masked orderings"
        },
    )

    def validate(self) -> None:
        if self.sobel and self.mask_from == "input":
            fail("model.sobel", "the Sobel filter mixes later pixels into each pixel: use mask_from features/decoder")
        if not self.widths or any(w < 2 for w in self.widths):
            fail("model.widths", f"at least one width, each >= 2 (V and H channels), got {self.widths}")
        if self.attention and self.widths[-1] % self.attention_heads:
            fail(
                "model.attention_heads",
                f"must divide the last width {self.widths[-1]}, got {self.attention_heads}",
            )


@dataclass
class ACLossConfig:
    displacement: int = field(default=10, metadata={"help": "T: pixel pairs within [-T, T]^2 (IIC: 10, 5)", "min": 0})
    lamb: float = field(
        default=1.0,
        metadata={"help": "marginal-entropy weight of the main head (IIC: 1.5 for -3, 1.0 for -15/-6)", "min": 1.0},
    )
    lamb_over: float = field(
        default=1.0, metadata={"help": "marginal-entropy weight of the over-clustering head (IIC: 1.0)", "min": 1.0}
    )
    head_alternation: Literal["step", "epoch"] = field(
        default="step",
        metadata={
            "help": "with model.k_over: train the heads in turn every step, or every pass over the training images "
            "(IIC: per epoch, over-clustering head first)"
        },
    )
    collapsed: bool = field(
        default=False,
        metadata={"help": "one joint over all displacements (True) or one per displacement (IIC)"},
    )
    ignore_unlabelled: bool = field(
        default=False,
        metadata={
            "help": "drop pixels whose label is the ignore index from the loss (IIC's COCO-Stuff protocol: "
            "pixels outside the chosen classes); uses the masks of the training images"
        },
    )


@dataclass
class ACViewsConfig:
    kind: Literal["raster", "random", "dropout"] = field(
        default="raster",
        metadata={
            "help": "AC's two views (mask_from != none): two of the 8 raster orderings (the paper), two random "
            "non-raster orderings of the feature positions, or two dropout masks of the unmasked network (the "
            "thesis' open question)"
        },
    )
    dropout: float = field(
        default=0.2, metadata={"help": "views.kind=dropout: element dropout rate", "gt": 0, "max": 0.9}
    )
    jitter: float = field(
        default=0.0, metadata={"help": "photometric jitter strength applied to each view (0 = off)", "min": 0}
    )
    flip: bool = field(default=False, metadata={"help": "randomly flip the second view (undone on its output)"})


@dataclass
class ACDataConfig:
    dataset: str = field(
        default="scenes",
        metadata={
            "help": "an unsupervised dataset: scenes, cocostuff3, cocostuff15, potsdam3, potsdam6, image-folder "
            "(`fewlabels data check` names)"
        },
    )
    root: str = field(default="", metadata={"help": "dataset folder (not needed for scenes)"})
    input_size: int = field(default=96, metadata={"help": "square crop side (IIC: 128 COCO, 200 Potsdam)", "min": 8})
    scale: float = field(default=1.0, metadata={"help": "image rescale before cropping (IIC COCO: 0.33)", "gt": 0})
    split: str = field(
        default="",
        metadata={"help": "train/eval split: COCO train2017|val2017, Potsdam list name; '' = default"},
    )
    eval_split: str = field(default="", metadata={"help": "evaluation split ('' = the training images: IID)"})
    eval_images: int = field(
        default=0,
        metadata={"help": "evaluate on the first N images (0 = all; every result reports the count)", "min": 0},
    )
    eval_input_size: int = field(
        default=0,
        metadata={
            "help": "side of the evaluation crops (0 = input_size: IIC's centre crop); the image side (e.g. "
            "scenes_size) evaluates whole images",
            "min": 0,
        },
    )
    eval_batch_size: int = field(default=16, metadata={"min": 1})
    scenes_n: int = field(default=600, metadata={"help": "generated datasets: images", "min": 2})
    scenes_size: int = field(default=96, metadata={"min": 16})

    @property
    def spec(self) -> DatasetSpec:
        """The registered dataset this section names."""
        return get_dataset(self.dataset, "unsupervised")

    def validate(self) -> None:
        try:
            spec = self.spec
        except DataError as err:
            fail("data.dataset", str(err))
        if spec.root != "none" and not self.root:
            fail(
                "data.root",
                f"dataset {self.dataset!r} needs data.root=/path/to/{self.dataset.rstrip('0123456789')}",
            )


@dataclass
class ACEvalConfig:
    bn_reestimate: int = field(
        default=0,
        metadata={
            "help": "before every evaluation: re-estimate the BatchNorm statistics of the mask-free network on N "
            "training batches (train.batch_size images each; no labels); 0 = off, the statistics gathered in "
            "training under masks",
            "min": 0,
        },
    )


@dataclass
class ACConfig(RunConfig):
    """AC: two raster-scan orderings of the same image are two views; maximise their pixel-wise mutual
    information. ``model.mask_from=none`` with ``views.jitter``/``views.flip`` is the IIC baseline."""

    method: str = "ac"
    model: ACModelConfig = field(default_factory=ACModelConfig)
    loss: ACLossConfig = field(default_factory=ACLossConfig)
    views: ACViewsConfig = field(default_factory=ACViewsConfig)
    data: ACDataConfig = field(default_factory=ACDataConfig)
    eval: ACEvalConfig = field(default_factory=ACEvalConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=300, batch_size=16, optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="constant"
        )
    )

    def validate(self) -> None:
        # The dataset's classes are the clusters of the main head (0: read from the data).
        classes = self.data.spec.metadata.num_classes
        if self.model.k and classes and self.model.k != classes:
            fail(
                "model.k",
                f"{self.data.dataset} has {classes} classes; Hungarian matching needs k = {classes} "
                f"(use model.k_over for over-clustering), got {self.model.k}",
            )
        if self.views.kind != "raster" and self.model.mask_from == "none":
            fail("views.kind", f"{self.views.kind} views replace the orderings: they need model.mask_from != none")
        if self.views.kind == "dropout" and self.model.inference == "ensemble":
            fail("model.inference", "dropout views train no masks: evaluate the plain network (inference=plain)")
        if self.eval.bn_reestimate and self.model.inference == "ensemble" and self.model.mask_from != "none":
            fail(
                "eval.bn_reestimate",
                "re-estimates the statistics of the mask-free network; the ensemble inference runs the masked "
                "views: use model.inference=plain",
            )
        if self.model.mask_from == "none" and self.views.jitter == 0 and not self.views.flip:
            fail(
                "views.jitter",
                "model.mask_from=none (IIC baseline) takes its two views from augmentations: "
                "set views.jitter > 0 and/or views.flip=true",
            )
