"""Configuration of CCT runs: the segmentation sections shared with the supervised baseline, plus CCT's own.

Defaults are the reference recipe's (yassouali/CCT ``configs/config.json``) where the spec gives one: K = 30
auxiliary decoders (2 VAT, 6 dropout, 6 G-Cutout, 2 context masking, 2 object masking, 6 feature drop, 6
feature noise), MSE consistency with weight 30 ramped up over the first 10% of training, plain cross-entropy
on the labels.

The ``perturbations`` section, :class:`PerturbationsConfig`, is defined in
:mod:`fewlabels.methods.cct.perturbations.base` next to the registry of the perturbation types whose counts and
parameters it holds, and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fewlabels.config import RunConfig, TrainConfig, fail
from fewlabels.methods.cct.perturbations import PerturbationsConfig
from fewlabels.methods.segmentation.config import SegDataConfig, SegEvalConfig, SegModelConfig

__all__ = ["CCTConfig", "CCTDomainConfig", "CCTLossConfig", "CCTWeakConfig", "PerturbationsConfig"]


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
    decoders too (or, with ``target: main``, the main decoder), with ``w_w(t) = weight * ramp(t)``."""

    labels_dir: str = field(default="", metadata={"help": "folder of <image id>.png pseudo-labels (empty = off)"})
    weight: float = field(default=0.4, metadata={"help": "w_w relative to the ramped w_u / its final value", "min": 0})
    target: Literal["aux", "main"] = field(
        default="aux",
        metadata={
            "help": "which decoders the pseudo-labels train: aux (the K perturbed aux decoders, the reference) or "
            "main (the main decoder, as extra masks: with loss.unsup_weight=0 the plain weak-label baseline)",
        },
    )


@dataclass
class CCTDomainConfig(SegDataConfig):
    """A further domain of multi-domain CCT: a full data section, plus whether the domain has labels."""

    label_free: bool = field(
        default=False,
        metadata={
            "help": "the domain has no labels (UDA target): all its training images are unlabeled, it trains only "
            "through the consistency loss, is predicted by domain 0's main decoder (same classes needed) and is "
            "evaluated on its own val split (its masks serve evaluation only)"
        },
    )


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
    unlabeled_images: int = field(
        default=0,
        metadata={
            "help": "train on this many of domain 0's unlabeled images, drawn with data.split_seed (a smaller count "
            "takes a subset of a larger one's; the labeled images do not change; 0 = all)",
            "min": 0,
        },
    )
    domains: list[CCTDomainConfig] = field(
        default_factory=list,
        metadata={
            "help": "multi-domain CCT: further domains, each a data section (dataset, root, labeled, ..., "
            "label_free); shared encoder, per domain a main decoder and K aux decoders over its own classes"
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

    @property
    def labeled_domains(self) -> list[int]:
        """The domains with labels (domain 0 always; a further one unless ``label_free``)."""
        return [0, *(i + 1 for i, d in enumerate(self.domains) if not d.label_free)]

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
