"""Configuration of CCT runs: the segmentation sections shared with the supervised baseline, plus CCT's own.

Defaults are the reference recipe's (yassouali/CCT ``configs/config.json``) where the spec gives one: K = 30
auxiliary decoders (2 VAT, 6 dropout, 6 G-Cutout, 2 context masking, 2 object masking, 6 feature drop, 6
feature noise), MSE consistency with weight 30 ramped up over the first 10% of training, plain cross-entropy
on the labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fewlabels.config import RunConfig, TrainConfig, fail
from fewlabels.methods.supervised.config import SegDataConfig, SegEvalConfig, SegModelConfig

__all__ = ["CCTConfig", "CCTLossConfig", "CCTWeakConfig", "PerturbationsConfig"]


@dataclass
class PerturbationsConfig:
    """How many auxiliary decoders of each perturbation type (their sum is K) and each type's parameters."""

    vat: int = field(default=2, metadata={"help": "I-VAT decoders", "min": 0})
    vat_eps: float = field(default=2.0, metadata={"help": "norm of the adversarial perturbation", "gt": 0})
    vat_xi: float = field(
        default=1e-4,
        metadata={
            "help": "power-iteration step, relative to the feature norm (reference 1e-6 absolute vanishes)",
            "gt": 0,
        },
    )
    vat_iterations: int = field(default=1, metadata={"help": "power iterations", "min": 1})
    dropout: int = field(default=6, metadata={"help": "channel-dropout (Dropout2d) decoders", "min": 0})
    dropout_rate: float = field(default=0.5, metadata={"min": 0, "max": 0.99})
    cutout: int = field(default=6, metadata={"help": "G-Cutout decoders", "min": 0})
    cutout_erase: float = field(
        default=0.4, metadata={"help": "box side / object bounding-box side", "gt": 0, "max": 1}
    )
    cutout_min_area: int = field(default=2, metadata={"help": "smallest object cut, in feature cells", "min": 1})
    cutout_max_objects: int = field(default=32, metadata={"help": "largest objects cut per image", "min": 1})
    context_mask: int = field(default=2, metadata={"help": "Con-Msk decoders (objects only)", "min": 0})
    object_mask: int = field(default=2, metadata={"help": "Obj-Msk decoders (context only)", "min": 0})
    feature_drop: int = field(default=6, metadata={"help": "F-Drop decoders", "min": 0})
    feature_drop_gamma: tuple[float, float] = field(
        default=(0.7, 0.9), metadata={"help": "range of gamma: drop where attention >= gamma * max"}
    )
    feature_noise: int = field(default=6, metadata={"help": "F-Noise decoders", "min": 0})
    feature_noise_range: float = field(default=0.3, metadata={"help": "N ~ U(-r, r)", "min": 0})
    background_classes: list[int] | None = field(
        default=None,
        metadata={
            "help": "classes that are not objects for G-Cutout/Con-Msk/Obj-Msk (default: the dataset's "
            "non-thing classes, e.g. [0] on VOC)"
        },
    )

    @property
    def counts(self) -> dict[str, int]:
        """Decoders per type, in the order of the stacked decoders."""
        return {
            "vat": self.vat,
            "dropout": self.dropout,
            "cutout": self.cutout,
            "context_mask": self.context_mask,
            "object_mask": self.object_mask,
            "feature_drop": self.feature_drop,
            "feature_noise": self.feature_noise,
        }

    @property
    def total(self) -> int:
        """K, the number of auxiliary decoders."""
        return sum(self.counts.values())

    def validate(self) -> None:
        if self.total < 1:
            fail("perturbations", "at least one auxiliary decoder is needed (all counts are 0)")
        lo, hi = self.feature_drop_gamma
        if not 0 < lo <= hi <= 1:
            fail("perturbations.feature_drop_gamma", f"must be a range 0 < low <= high <= 1, got {[lo, hi]}")
        if self.background_classes is not None and any(c < 0 for c in self.background_classes):
            fail("perturbations.background_classes", f"class indices are >= 0, got {self.background_classes}")


@dataclass
class CCTLossConfig:
    """Loss terms: ``L = L_s + w_u(t) L_u (+ w_w(t) L_w) (+ pairwise_weight L_pw)``."""

    supervised: Literal["ce", "abce"] = field(
        default="ce", metadata={"help": "cross-entropy, or annealed-bootstrapped CE (hard pixels only)"}
    )
    abce_rampup: float = field(
        default=0.4, metadata={"help": "abCE threshold ramp, fraction of training", "gt": 0, "max": 1}
    )
    abce_min_kept: int = field(default=1, metadata={"help": "abCE pixels always kept per image", "min": 0})
    unsupervised: Literal["mse", "kl", "js"] = field(default="mse", metadata={"help": "consistency distance d"})
    unsup_weight: float = field(default=30.0, metadata={"help": "final w_u", "min": 0})
    rampup: float = field(
        default=0.1, metadata={"help": "w_u sigmoid ramp-up, fraction of training", "min": 0, "max": 1}
    )
    conf_threshold: float | None = field(
        default=None, metadata={"help": "keep only unlabeled pixels whose target confidence exceeds this"}
    )
    pairwise_weight: float = field(
        default=0.0, metadata={"help": "weight of the variance among aux outputs (0 = off)", "min": 0}
    )
    pairwise_decoders: int = field(default=8, metadata={"help": "random aux decoders in the pairwise term", "min": 2})

    def validate(self) -> None:
        if self.conf_threshold is not None:
            if not 0 <= self.conf_threshold < 1:
                fail("loss.conf_threshold", f"must be in [0, 1), got {self.conf_threshold}")
            if self.unsupervised == "js":
                fail("loss.conf_threshold", "the JS consistency has no confidence masking; use mse or kl")


@dataclass
class CCTWeakConfig:
    """Weak labels: CAM pseudo-labels of the unlabeled images (``fewlabels cct-pseudo-labels``) train the aux
    decoders too, with ``w_w(t) = weight * w_u(t) / unsup_weight``."""

    labels_dir: str = field(default="", metadata={"help": "folder of <image id>.png pseudo-labels (empty = off)"})
    weight: float = field(default=0.4, metadata={"help": "w_w relative to the ramped w_u / its final value", "min": 0})


@dataclass
class CCTConfig(RunConfig):
    """CCT: shared encoder, main decoder trained on labels, K perturbed aux decoders trained to agree."""

    method: str = "cct"
    model: SegModelConfig = field(default_factory=SegModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    eval: SegEvalConfig = field(default_factory=SegEvalConfig)
    loss: CCTLossConfig = field(default_factory=CCTLossConfig)
    perturbations: PerturbationsConfig = field(default_factory=PerturbationsConfig)
    weak: CCTWeakConfig = field(default_factory=CCTWeakConfig)
    unlabeled_batch_size: int = field(
        default=0, metadata={"help": "unlabeled images per step (0 = train.batch_size)", "min": 0}
    )
    domains: list[SegDataConfig] = field(
        default_factory=list,
        metadata={
            "help": "multi-domain CCT: further domains, each a data section (dataset, root, labeled, ...) with the "
            "classes of `data` (domain 0); shared encoder and aux decoders, one main decoder per domain"
        },
    )
    predict_domain: int = field(
        default=0, metadata={"help": "multi-domain: the main decoder that predict and the figures use", "min": 0}
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=8, lr=0.01))

    @property
    def all_domains(self) -> list[SegDataConfig]:
        """The data section of every domain, domain 0 (``data``) first."""
        return [self.data, *self.domains]

    def validate(self) -> None:
        # Training crops go through the pixel-shuffle decoders without padding: catch a bad size up front.
        stride, crop = self.model.output_stride, self.data.crop_size
        if crop % stride:
            fail("data.crop_size", f"must be a multiple of model.output_stride={stride}, got {crop}")
        for i, domain in enumerate(self.domains):
            if domain.crop_size != crop:
                # The domains' crops are concatenated into one batch per step.
                fail(
                    f"domains[{i}].crop_size",
                    f"every domain trains on data.crop_size={crop} crops, got {domain.crop_size}",
                )
        if self.predict_domain > len(self.domains):
            n = len(self.domains) + 1
            fail("predict_domain", f"there are {n} domains (0..{n - 1}), got {self.predict_domain}")
        if self.domains and self.weak.labels_dir:
            fail("weak.labels_dir", "weak labels are for single-domain runs; remove `domains` or `weak.labels_dir`")
