"""CCT as a :class:`~fewlabels.methods.segmentation.SegmentationMethod`: its model, training step and domains.

Data, encoder-decoder, evaluation, prediction and figures are those of the segmentation base, shared with the
supervised baseline, so that a CCT-vs-baseline difference comes from the method only.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.data.base import DataError, FewDataset, Subset, fill_batch
from fewlabels.data.segmentation import SegmentationData
from fewlabels.data.splits import labeled_unlabeled_split
from fewlabels.methods.base import Source, StepOutput
from fewlabels.methods.cct.config import CCTConfig, CCTDomainConfig
from fewlabels.methods.cct.losses import abce_loss, abce_threshold, consistency_weight
from fewlabels.methods.cct.model import CCTLossSettings, CCTModel
from fewlabels.methods.segmentation.config import SegEvalConfig
from fewlabels.methods.segmentation.method import (
    LabelSpace,
    LogitsFn,
    SegmentationMethod,
    build_segmentation_data,
    evaluate_segmentation,
    label_space_without_data,
    segmentation_figure,
)
from fewlabels.models import ExportableSegmenter, build_segmentation_model
from fewlabels.parallel import global_mean
from fewlabels.registry import register_method

__all__ = ["CCTMethod"]


def _unwrap(model: nn.Module) -> CCTModel:
    inner = getattr(model, "module", model)  # DDP-wrapped or not
    if not isinstance(inner, CCTModel):
        raise TypeError(f"expected a CCTModel, got {type(inner).__name__}")
    return inner


def _all_training_images(unlabeled: FewDataset) -> FewDataset:
    """Every training image of a drawn split: the whole image set that ``unlabeled`` is a subset of."""
    return unlabeled.dataset if isinstance(unlabeled, Subset) else unlabeled


def _unlabeled_subset(unlabeled: FewDataset, count: int, seed: int) -> FewDataset:
    """``count`` of the unlabeled images (``unlabeled_images``), drawn with ``seed``: for the same images and seed, a
    smaller count takes a subset of a larger one's, so a curve over the count adds images without swapping any."""
    from fewlabels.config import ConfigError

    if count > len(unlabeled):
        raise ConfigError("unlabeled_images", f"asks for {count} unlabeled images; the split has {len(unlabeled)}")
    chosen, _ = labeled_unlabeled_split(len(unlabeled), count, seed)
    return Subset(unlabeled, chosen)


def _label_free_data(cfg: CCTDomainConfig) -> SegmentationData:
    """The datasets of a label-free domain: all its training images unlabeled, its val split for evaluation.

    A folder (``seg-folder``) whose training images have no mask at all is read directly: its ``images/`` (and
    ``unlabeled/``) train, its ``val/`` (with masks) evaluates."""
    from fewlabels.data.registry import get_dataset

    try:
        data = build_segmentation_data(cfg)
    except DataError:
        if get_dataset(cfg.dataset, "segmentation").name != "seg-folder":
            raise
        data = _maskless_folder_data(cfg)
    data.unlabeled = _all_training_images(data.unlabeled)
    return data


def _maskless_folder_data(cfg: CCTDomainConfig) -> SegmentationData:
    from fewlabels.data.common import IGNORE_INDEX
    from fewlabels.data.seg_folder import FolderSegmentation, folder_metadata
    from fewlabels.data.transforms import SegAugment

    augment = SegAugment(cfg.crop_size, (cfg.scale[0], cfg.scale[1]), cfg.hflip, IGNORE_INDEX)
    val_root = Path(cfg.root) / cfg.val_split
    if not (val_root / "images").is_dir():
        raise DataError(
            f"label-free domain {cfg.root}: its images have no masks, so it is evaluated on {val_root}/images + "
            f"{val_root}/masks, which is missing"
        )
    val = FolderSegmentation(val_root, labeled=True, num_classes=cfg.num_classes or None)
    images = FolderSegmentation(cfg.root, labeled=False, transform=augment, num_classes=val.num_classes)
    return SegmentationData.from_metadata(
        images,
        images,
        val,
        folder_metadata(val.class_names),
        num_classes=int(val.num_classes or 0),
        class_names=val.class_names,
    )


@register_method
class CCTMethod(SegmentationMethod[CCTConfig, SegmentationData]):
    """Cross-consistency training: ``L = L_s + w_u(t) L_u (+ w_w(t) L_w) (+ lambda_pw L_pw)``."""

    name = "cct"
    description = "semi-supervised segmentation by cross-consistency training (CCT, Ouali et al. 2020)"
    config_class = CCTConfig
    figure_column = "CCT"
    figure_caption = "validation images: image / ground truth / CCT prediction"

    def build_data(self) -> SegmentationData:
        """Domain 0's datasets; with weak labels, the unlabeled images carry their pseudo-label masks."""
        data = build_segmentation_data(self.config.data)
        if self.config.unlabeled_images:
            cfg = self.config
            data.unlabeled = _unlabeled_subset(data.unlabeled, cfg.unlabeled_images, cfg.data.split_seed)
        if self.config.weak.labels_dir:
            from fewlabels.methods.cct.weak import PseudoLabeledImages

            data.unlabeled = PseudoLabeledImages(data.unlabeled, self.config.weak.labels_dir)
        return data

    @property
    def eval_settings(self) -> SegEvalConfig:
        return self.config.eval

    @cached_property
    def further_domain_data(self) -> list[SegmentationData]:
        """The datasets of the further domains (multi-domain CCT), ``domains[0]`` first. Domains may have their
        own classes; a label-free domain has all its training images unlabeled and needs domain 0's classes (it is
        predicted by domain 0's main decoder)."""
        from fewlabels.config import ConfigError

        out = []
        for i, cfg in enumerate(self.config.domains):
            data = _label_free_data(cfg) if cfg.label_free else build_segmentation_data(cfg)
            if cfg.label_free and data.num_classes != self.label_space.num_classes:
                raise ConfigError(
                    f"domains[{i}].label_free",
                    f"a label-free domain is predicted by domain 0's main decoder, so it needs domain 0's "
                    f"{self.label_space.num_classes} classes, but it has {data.num_classes}",
                )
            out.append(data)
        return out

    @property
    def domain_data(self) -> list[SegmentationData]:
        """The datasets of every domain, domain 0 (``data``) first."""
        return [self.checked_data(), *self.further_domain_data]

    @cached_property
    def domain_labels(self) -> list[LabelSpace]:
        """The label space of every domain, domain 0 first: without reading data where the run allows it
        (restored for inference), else the data's."""
        spaces = [self.label_space]
        for i, cfg in enumerate(self.config.domains):
            space = label_space_without_data(cfg, None) if self.restored_labels is not None else None
            if space is None:
                data = self.further_domain_data[i]
                space = LabelSpace(
                    data.num_classes, tuple(data.class_names), data.ignore_index, tuple(data.thing_classes)
                )
            spaces.append(space)
        return spaces

    @property
    def num_classes(self) -> int:
        """Classes of the domain that predictions and figures show (``predict_domain``)."""
        return self.domain_labels[self.config.predict_domain].num_classes

    @property
    def background_classes(self) -> list[int]:
        """Configured background classes, or the dataset's non-thing classes."""
        chosen = self.config.perturbations.background_classes
        if chosen is not None:
            return list(chosen)
        labels = self.label_space  # the run's (restored without reading data) or the data's
        things = set(labels.thing_classes)
        return [c for c in range(labels.num_classes) if c not in things]

    def domain_background(self, domain: int) -> list[int]:
        """Background classes of ``domain``: the configured ones that exist in its classes, else its dataset's
        non-thing classes (from the dataset's metadata: never a class index the user must know)."""
        if domain == 0:
            return self.background_classes
        space = self.domain_labels[domain]
        chosen = self.config.perturbations.background_classes
        if chosen is not None:
            return [c for c in chosen if c < space.num_classes]
        things = set(space.thing_classes)
        return [c for c in range(space.num_classes) if c not in things]

    def build_model(self) -> nn.Module:
        cfg = self.config
        spaces = self.domain_labels
        # `net` scores domain 0's classes; the base's build_network scores num_classes (predict_domain's here).
        if self.num_classes == spaces[0].num_classes:
            net = self.build_network(cfg.model)
        else:
            net = build_segmentation_model(
                cfg.model.encoder,
                spaces[0].num_classes,
                output_stride=cfg.model.output_stride,
                psp=cfg.model.psp,
                psp_channels=cfg.model.psp_channels,
                deep_stem=cfg.model.deep_stem,
                pretrained=cfg.model.pretrained,
            )
        losses = CCTLossSettings(
            unsupervised=cfg.loss.unsupervised,
            conf_threshold=cfg.loss.conf_threshold,
            pairwise=cfg.loss.pairwise_weight > 0,
            pairwise_decoders=cfg.loss.pairwise_decoders,
            ignore_index=self.label_space.ignore_index,
            weak_target=cfg.weak.target,
        )
        n = len(cfg.all_domains)
        if n == 1:
            return CCTModel(net, cfg.perturbations, self.background_classes, losses)
        labeled = set(cfg.labeled_domains)
        return CCTModel(
            net,
            cfg.perturbations,
            self.background_classes,
            losses,
            num_domains=n,
            domain_classes=[space.num_classes for space in spaces],
            domain_backgrounds=[self.domain_background(d) for d in range(n)],
            main_decoder_of=[d if d in labeled else 0 for d in range(n)],
        )

    @staticmethod
    def _source_names(domain: int) -> tuple[str, str]:
        return ("labeled", "unlabeled") if domain == 0 else (f"labeled_{domain}", f"unlabeled_{domain}")

    def train_sources(self) -> dict[str, Source]:
        """``labeled`` and ``unlabeled`` batches (and ``labeled_<d>`` / ``unlabeled_<d>`` of every further
        domain d, with the same batch sizes; a label-free domain has no labeled source). A source with fewer images
        than its batch is repeated to fill it (:func:`~fewlabels.data.base.fill_batch`): 4 labeled images train
        with a batch of 8."""
        cfg = self.config
        labeled_bs = cfg.train.batch_size
        unlabeled_bs = cfg.unlabeled_batch_size or cfg.train.batch_size
        labeled = set(cfg.labeled_domains)
        sources = {}
        for d, data in enumerate(self.domain_data):
            lab, unl = self._source_names(d)
            if d in labeled:
                sources[lab] = Source(fill_batch(data.labeled, labeled_bs), labeled_bs)
            sources[unl] = Source(fill_batch(data.unlabeled, unlabeled_bs), unlabeled_bs)
        return sources

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return self.encoder_param_groups(model, self.config.model.encoder_lr_scale)

    def weights(self, step: int, total_steps: int) -> tuple[float, float]:
        """``(w_u(t), w_w(t))``: sigmoid ramp-up over ``loss.rampup`` of training; ``w_w = weak.weight * w_u / w``."""
        loss = self.config.loss
        ramp = consistency_weight(step, int(loss.rampup * total_steps), 1.0)
        return loss.unsup_weight * ramp, self.config.weak.weight * ramp

    def _supervised_loss(
        self, logits: torch.Tensor, mask: torch.Tensor, ignore: int, step: int, total_steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, weight)`` of one domain's labeled batch: CE as a sum with its labeled-pixel count (the caller
        divides over the global batch), or abCE as a mean with its image count."""
        cfg = self.config
        logits = logits.float()
        if cfg.loss.supervised == "abce":
            ramp_steps = int(cfg.loss.abce_rampup * total_steps)
            threshold = abce_threshold(step, ramp_steps, logits.shape[1])
            loss = abce_loss(logits, mask, threshold, cfg.loss.abce_min_kept, ignore)
            return loss, torch.tensor(float(mask.shape[0]), device=logits.device)
        total = F.cross_entropy(logits, mask, ignore_index=ignore, reduction="sum")
        return total, (mask != ignore).sum()

    def training_step(self, model: nn.Module, batch: dict, step: int, total_steps: int) -> StepOutput:
        cfg = self.config
        n = len(cfg.all_domains)
        if n == 1:
            images_l, mask = batch["labeled"]["image"], batch["labeled"]["mask"]
            images_u = batch["unlabeled"]["image"]
            counts_l: list[int] | None = None
            counts_u: list[int] | None = None
        else:
            labeled = set(cfg.labeled_domains)
            lab = {d: batch[self._source_names(d)[0]] for d in sorted(labeled)}
            unl = [batch[self._source_names(d)[1]] for d in range(n)]
            images_l = torch.cat([b["image"] for b in lab.values()])
            images_u = torch.cat([b["image"] for b in unl])
            counts_l = [lab[d]["image"].shape[0] if d in labeled else 0 for d in range(n)]
            counts_u = [b["image"].shape[0] for b in unl]
        out = model(
            images_l,
            images_u,
            mode="train",
            pseudo_labels=batch["unlabeled"].get("mask") if cfg.weak.labels_dir else None,
            domains_l=counts_l,
            domains_u=counts_u,
        )
        if counts_l is None:
            parts = [self._supervised_loss(out["logits_l"], mask, self.data.ignore_index, step, total_steps)]
        else:
            parts = [
                self._supervised_loss(
                    out[f"logits_l_d{d}"],
                    batch[self._source_names(d)[0]]["mask"],
                    self.domain_data[d].ignore_index,
                    step,
                    total_steps,
                )
                for d in range(n)
                if counts_l[d]
            ]
        if len(parts) == 1 and cfg.loss.supervised == "abce":
            loss_s = parts[0][0]
        elif cfg.loss.supervised == "abce":
            # The mean of the domains' abCE losses, weighted by their images.
            weights = torch.stack([w for _, w in parts])
            loss_s = (torch.stack([loss for loss, _ in parts]) * weights).sum() / weights.sum()
        elif len(parts) == 1:
            # Mean over the labeled pixels of the global batch: the same value with 1 or N processes.
            loss_s = global_mean(*parts[0])
        else:
            # ... over every labeled pixel of every domain.
            loss_s = global_mean(torch.stack([t for t, _ in parts]).sum(), torch.stack([c for _, c in parts]).sum())
        w_u, w_w = self.weights(step, total_steps)
        loss = loss_s + w_u * out["loss_u"]
        logs: dict[str, torch.Tensor | float] = {
            "loss_sup": loss_s.detach(),
            "loss_unsup": out["loss_u"].detach(),
            "w_unsup": w_u,
        }
        if "loss_w" in out:
            loss = loss + w_w * out["loss_w"]
            logs["loss_weak"] = out["loss_w"].detach()
        if "loss_pair" in out:
            loss = loss + cfg.loss.pairwise_weight * out["loss_pair"]
            logs["loss_pair"] = out["loss_pair"].detach()
        return StepOutput(loss, logs)

    # --- evaluation and inference ---------------------------------------------------------------------------
    def predictor(self, model: nn.Module, domain: int | None = None) -> LogitsFn:
        """Logits function of a main decoder (what evaluation, prediction and figures use): the one of ``domain``,
        by default ``predict_domain`` (0 unless configured)."""
        cct = _unwrap(model)
        chosen = self.config.predict_domain if domain is None else domain
        return lambda images: cct(images, mode="predict", domains_l=chosen)

    def export_network(self, model: nn.Module) -> nn.Module:
        """The main decoder of ``predict_domain`` on the shared encoder (the auxiliary decoders and perturbations
        are training-only): the predictor of :meth:`predictor` as a module."""
        cct = _unwrap(model)
        return ExportableSegmenter(cct.net, cct.decoder_of(self.config.predict_domain))

    def export_image_shape(self, model: nn.Module) -> tuple[int, int]:
        return _unwrap(model).net.in_channels, self.config.data.crop_size

    def export_metadata(self, model: nn.Module) -> dict[str, Any]:
        meta = super().export_metadata(_unwrap(model).net)
        labels = self.domain_labels[self.config.predict_domain]
        meta.update(classes=list(labels.class_names), num_classes=labels.num_classes)
        if self.config.domains:
            meta["domain"] = self.config.predict_domain
        return meta

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """mIoU, pixel accuracy and per-class IoU on the val split. With several domains each domain's val split
        is evaluated with its own main decoder (a label-free domain: the one it shares; keys suffixed
        ``_d<domain>``) and ``miou`` / ``pixel_accuracy`` are the means over the domains."""
        per_domain = [
            evaluate_segmentation(
                self.predictor(model, d),
                data.val,
                data.num_classes,
                self.config.eval,
                device,
                data.class_names,
                label="eval" if len(self.domain_data) == 1 else f"eval domain {d}",
            )
            for d, data in enumerate(self.domain_data)
        ]
        if len(per_domain) == 1:
            return per_domain[0]
        metrics = {f"{k}_d{d}": v for d, values in enumerate(per_domain) for k, v in values.items()}
        for key in ("miou", "pixel_accuracy"):
            metrics[key] = sum(values[key] for values in per_domain) / len(per_domain)
        return metrics

    def report_figures(self, model: nn.Module, out_dir: Path, device: torch.device) -> dict[str, Path]:
        """The base's figure, on the validation images of ``predict_domain`` (the domain its predictor shows)."""
        domain = self.config.predict_domain
        if domain == 0:
            return super().report_figures(model, out_dir, device)
        model.eval()
        path = segmentation_figure(
            {self.figure_column: self.predictor(model)},
            self.domain_data[domain].val,
            self.num_classes,
            out_dir / self.figure_file,
            device,
        )
        return {f"{self.figure_caption} (domain {domain})": path}
