"""Configuration of the few-shot methods: ``scl`` (CE / GC / SC pre-training), ``scl-distill`` and ``protonet``.

Every row of the thesis table is a loss configuration of ``scl``:

| row | views | lambda_cls | lambda_gc | lambda_sc | lambda_ss_gc | lambda_ss_sc |
|---|---|---|---|---|---|---|
| CE | [standard] | 1 | 0 | 0 | 0 | 0 |
| CE + aug | [standard, simclr] | 1 | 0 | 0 | 0 | 0 |
| CE + SS-GC | [standard, simclr] | 1 | 0 | 0 | 1 | 0 |
| CE + SS-SC | [standard, simclr] | 1 | 0 | 0 | 0 | 1 |
| CE + SS-GC + SS-SC | [standard, simclr] | 1 | 0 | 0 | 1 | 1 |
| CE + GC | [standard, simclr] | 1 | 1 | 0 | 0 | 0 |
| CE + SC | [standard, simclr] | 1 | 0 | 1 | 0 | 0 |
| CE + GC + SC | [standard, simclr] | 1 | 1 | 1 | 0 | 0 |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fewlabels.config import RunConfig, TrainConfig, fail
from fewlabels.data.base import DataError
from fewlabels.data.registry import DatasetSpec, get_dataset
from fewlabels.methods.scl.augment import VIEW_KINDS


@dataclass
class FewShotModelConfig:
    backbone: Literal["resnet12", "conv4", "resnet18"] = field(
        default="resnet12", metadata={"help": "resnet12 (640-d), conv4 (64-d) or resnet18 (512-d)"}
    )
    drop_rate: float = field(default=0.1, metadata={"help": "ResNet-12 dropout / DropBlock rate", "min": 0, "max": 1})
    dropblock_size: int = field(default=0, metadata={"help": "0 = 5, or 2 for images <= 32 px", "min": 0})
    dropblock_ramp_steps: int = field(
        default=40_000,
        metadata={"help": "batches over which DropBlock's keep prob ramps 1 -> 1 - rate", "min": 1},
    )
    normalisation: Literal["auto", "imagenet", "mini-imagenet", "cifar"] = field(
        default="auto",
        metadata={
            "help": "input statistics: auto = the reference's for the dataset (mini-imagenet for mini/tiered-"
            "ImageNet, cifar for CIFAR-FS/FC100, imagenet otherwise)"
        },
    )


@dataclass
class FewShotDataConfig:
    dataset: str = field(
        default="glyphs",
        metadata={
            "help": "a few-shot dataset: glyphs, mini-imagenet, tiered-imagenet, cifar-fs, fc100, fewshot-folder "
            "(`fewlabels data check` names)"
        },
    )
    root: str = field(default="", metadata={"help": "dataset folder (not needed for glyphs)"})
    image_size: int = field(
        default=0, metadata={"help": "0 = dataset default (84; 32 for cifar-fs, fc100, glyphs)", "min": 0}
    )
    split_file: str = field(
        default="",
        metadata={"help": "folder datasets: file naming base/val/novel classes (default ROOT/splits.json)"},
    )
    glyphs_per_class: int = field(default=24, metadata={"help": "glyphs: images per class", "min": 2})
    glyphs_seed: int = field(default=0, metadata={"help": "glyphs: generation seed"})

    @property
    def spec(self) -> DatasetSpec:
        """The registered dataset this section names."""
        return get_dataset(self.dataset, "few-shot")

    def resolved_image_size(self) -> int:
        """``image_size``, or the dataset's default side when it is 0."""
        return self.image_size or self.spec.metadata.image_size

    def validate(self) -> None:
        try:
            spec = self.spec
        except DataError as err:
            fail("data.dataset", str(err))
        if spec.root != "none" and not self.root:
            fail("data.root", f"dataset {self.dataset!r} needs data.root=/path/to/{self.dataset}")


@dataclass
class FewShotEvalConfig:
    """The episodic test protocol: seeded N-way K-shot episodes scored by a linear probe on frozen features.

    :func:`fewlabels.methods.scl.fewshot_eval.fewshot_evaluate` takes one of these. ``fewlabels fewshot-eval``
    fills it from the ``eval`` section of the run's config.yaml and replaces only the fields whose flags are given.
    """

    ways: int = field(default=5, metadata={"help": "classes per episode", "min": 2})
    shots: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "support images per class"})
    queries: int = field(default=15, metadata={"help": "query images per class", "min": 1})
    episodes: int = field(default=600, metadata={"help": "test episodes (fewshot-eval)", "min": 1})
    seed: int = field(default=0, metadata={"help": "episode seed (same episodes for every model)"})
    classifier: Literal["lr", "nc"] = field(
        default="lr", metadata={"help": "lr: logistic regression (C=1); nc: nearest centroid"}
    )
    support_augment: int = field(
        default=0,
        metadata={
            "help": "0 = the raw support images; N = N augmented copies of each (every copy augmented, as the "
            "reference; it used 5)",
            "min": 0,
        },
    )
    exact: bool = field(
        default=False,
        metadata={"help": "fewshot-eval: scikit-learn per episode instead of the batched solver (same protocol)"},
    )
    features: Literal["both", "pooled", "spatial"] = field(
        default="both",
        metadata={
            "help": "feature types with one classifier each, probabilities summed: pooled (D), spatial (2x2 "
            "max-pooled, 4D) or both (the reference)"
        },
    )
    batch_size: int = field(default=128, metadata={"help": "feature extraction batch", "min": 1})

    def validate(self) -> None:
        if not self.shots or any(k < 1 for k in self.shots):
            fail("eval.shots", f"needs one or more positive shot counts, got {self.shots}")


@dataclass
class EpisodeEvalConfig(FewShotEvalConfig):
    """The ``eval`` section of a few-shot run: the test protocol and the episodes of the quick validation."""

    val_episodes: int = field(default=100, metadata={"help": "episodes of the quick validation", "min": 2})


@dataclass
class SCLLossConfig:
    lambda_cls: float = field(default=1.0, metadata={"help": "cross-entropy weight (averaged over views)", "min": 0})
    lambda_sc: float = field(default=1.0, metadata={"help": "supervised spatial contrastive (SC)", "min": 0})
    lambda_gc: float = field(default=0.0, metadata={"help": "supervised global contrastive (GC)", "min": 0})
    lambda_ss_sc: float = field(default=0.0, metadata={"help": "self-supervised SC (positives: other view)", "min": 0})
    lambda_ss_gc: float = field(default=0.0, metadata={"help": "self-supervised GC", "min": 0})
    inverse_temperature: float = field(default=10.0, metadata={"gt": 0})
    aggregation: Literal["mean", "sum", "max", "logsum"] = "mean"
    lse_lambda: float = field(default=6.0, metadata={"help": "logsum aggregation sharpness", "gt": 0})

    def contrastive(self) -> bool:
        return any(w > 0 for w in (self.lambda_sc, self.lambda_gc, self.lambda_ss_sc, self.lambda_ss_gc))

    def uses_spatial(self) -> bool:
        return self.lambda_sc > 0 or self.lambda_ss_sc > 0

    def uses_global(self) -> bool:
        return self.lambda_gc > 0 or self.lambda_ss_gc > 0


@dataclass
class AugmentConfig:
    views: list[str] = field(
        default_factory=lambda: ["standard", "simclr"],
        metadata={"help": "one augmentation per view: standard, simclr or none (1 or 2 views)"},
    )

    def validate(self) -> None:
        if not 1 <= len(self.views) <= 2:
            fail("augment.views", f"needs 1 or 2 views, got {self.views}")
        for v in self.views:
            if v not in VIEW_KINDS:
                fail("augment.views", f"unknown view {v!r}; valid choices: {', '.join(VIEW_KINDS)}")


def _recipe_train() -> TrainConfig:
    # RFS/SCL mini-ImageNet recipe: SGD 0.05, momentum 0.9, wd 5e-4, batch 64, x0.1 at 60 and 80 of 90 epochs.
    return TrainConfig(
        steps=1000,
        batch_size=64,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        scheduler="step",
        milestones=[60 / 90, 80 / 90],
        gamma=0.1,
        checkpoint_every=500,
    )


@dataclass
class FewShotConfig(RunConfig):
    """Fields shared by every few-shot method: backbone, data, episodic evaluation."""

    model: FewShotModelConfig = field(default_factory=FewShotModelConfig)
    data: FewShotDataConfig = field(default_factory=FewShotDataConfig)
    eval: EpisodeEvalConfig = field(default_factory=EpisodeEvalConfig)
    train: TrainConfig = field(default_factory=_recipe_train)


@dataclass
class SCLConfig(FewShotConfig):
    """Pre-training on the merged base classes with CE and the optional GC / SC / SS regularisers."""

    method: str = "scl"
    loss: SCLLossConfig = field(default_factory=SCLLossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        if self.loss.contrastive() and len(self.augment.views) != 2:
            fail("augment.views", f"contrastive losses need two views, got {self.augment.views}")
        if self.loss.lambda_cls == 0 and not self.loss.contrastive():
            fail("loss.lambda_cls", "every loss weight is 0: nothing to train")


@dataclass
class DistillConfig:
    teacher: str = field(default="", metadata={"help": "run directory of the teacher (config.yaml + weights)"})
    weights: Literal["last", "best"] = field(
        default="last",
        metadata={"help": "teacher weights: last = model.safetensors, best = best.safetensors"},
    )
    temperature: float = field(default=4.0, metadata={"gt": 0})
    lambda_kl: float = field(default=1.0, metadata={"help": "KL(T) * T^2 on the logits", "min": 0})
    lambda_contrast: float = field(default=10.0, metadata={"help": "2 - 2 cos on pooled features", "min": 0})
    lambda_spatial: float = field(
        default=0.0,
        metadata={"help": "2 - 2 cos per spatial position, averaged over batch and positions", "min": 0},
    )


@dataclass
class SCLDistillConfig(SCLConfig):
    """Second stage: a student of the same architecture distilled from a frozen teacher run (single view)."""

    method: str = "scl-distill"
    distill: DistillConfig = field(default_factory=DistillConfig)
    loss: SCLLossConfig = field(default_factory=lambda: SCLLossConfig(lambda_cls=0.0, lambda_sc=0.0))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(views=["standard"]))
    train: TrainConfig = field(default_factory=lambda: _recipe_train_distill())

    def validate(self) -> None:
        if not self.distill.teacher:
            fail(
                "distill.teacher",
                "needs the run directory of a trained scl teacher (distill.teacher=runs/NAME)",
            )
        if self.loss.contrastive() and len(self.augment.views) != 2:
            fail("augment.views", f"contrastive losses need two views, got {self.augment.views}")


def _recipe_train_distill() -> TrainConfig:
    cfg = _recipe_train()
    cfg.lr = 0.01
    return cfg


@dataclass
class EpisodicTrainConfig:
    ways: int = field(default=5, metadata={"help": "classes per training episode", "min": 2})
    shots: int = field(default=5, metadata={"min": 1})
    queries: int = field(default=15, metadata={"min": 1})
    episodes_per_epoch: int = field(default=1000, metadata={"min": 1})
    augment: bool = field(default=True, metadata={"help": "standard augmentation of the episode images"})


@dataclass
class ProtoNetConfig(FewShotConfig):
    """Episodic metric learning: squared-Euclidean prototypes, CE over the queries (Snell et al. 2017)."""

    method: str = "protonet"
    episodes: EpisodicTrainConfig = field(default_factory=EpisodicTrainConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=1000,
            batch_size=1,
            optimizer="adam",
            lr=1e-3,
            weight_decay=0.0,
            scheduler="step",
            milestones=[0.5],
            gamma=0.5,
            checkpoint_every=500,
        )
    )
