"""CCT as a :class:`~fewlabels.methods.segmentation.SegmentationMethod`: its model, training step and domains.

Data, encoder-decoder, evaluation, prediction and figures are those of the segmentation base, shared with the
supervised baseline, so that a CCT-vs-baseline difference comes from the method only.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.data.segmentation import SegmentationData
from fewlabels.methods.base import Source, StepOutput
from fewlabels.methods.cct.config import CCTConfig
from fewlabels.methods.cct.losses import abce_loss, abce_threshold, consistency_weight
from fewlabels.methods.cct.model import CCTLossSettings, CCTModel
from fewlabels.methods.segmentation.config import SegEvalConfig
from fewlabels.methods.segmentation.method import (
    LogitsFn,
    SegmentationMethod,
    build_segmentation_data,
    evaluate_segmentation,
)
from fewlabels.parallel import global_mean
from fewlabels.registry import register_method

__all__ = ["CCTMethod"]


def _unwrap(model: nn.Module) -> CCTModel:
    inner = getattr(model, "module", model)  # DDP-wrapped or not
    if not isinstance(inner, CCTModel):
        raise TypeError(f"expected a CCTModel, got {type(inner).__name__}")
    return inner


@register_method
class CCTMethod(SegmentationMethod[SegmentationData]):
    """Cross-consistency training: ``L = L_s + w_u(t) L_u (+ w_w(t) L_w) (+ lambda_pw L_pw)``."""

    name = "cct"
    description = "semi-supervised segmentation by cross-consistency training (CCT, Ouali et al. 2020)"
    config_class = CCTConfig
    config: CCTConfig
    figure_column = "CCT"
    figure_caption = "validation images: image / ground truth / CCT prediction"

    def build_data(self) -> SegmentationData:
        """Domain 0's datasets; with weak labels, the unlabeled images carry their pseudo-label masks."""
        data = build_segmentation_data(self.config.data)
        if self.config.weak.labels_dir:
            from fewlabels.methods.cct.weak import PseudoLabeledImages

            data.unlabeled = PseudoLabeledImages(data.unlabeled, self.config.weak.labels_dir)
        return data

    @property
    def eval_settings(self) -> SegEvalConfig:
        return self.config.eval

    @cached_property
    def domain_data(self) -> list[SegmentationData]:
        """The datasets of every domain (multi-domain CCT), domain 0 (``data``) first; all share the classes."""
        from fewlabels.config import ConfigError

        out = [self.data]
        for i, cfg in enumerate(self.config.domains):
            data = build_segmentation_data(cfg)
            if (data.num_classes, data.ignore_index) != (out[0].num_classes, out[0].ignore_index):
                raise ConfigError(
                    f"domains[{i}]",
                    f"has {data.num_classes} classes (ignore index {data.ignore_index}) but `data` has "
                    f"{out[0].num_classes} (ignore index {out[0].ignore_index}): the domains share the aux decoders, "
                    "so they need the same classes; map the labels to one class list",
                )
            out.append(data)
        return out

    @property
    def background_classes(self) -> list[int]:
        """Configured background classes, or the dataset's non-thing classes."""
        chosen = self.config.perturbations.background_classes
        if chosen is not None:
            return list(chosen)
        things = set(self.data.thing_classes)
        return [c for c in range(self.data.num_classes) if c not in things]

    def build_model(self) -> nn.Module:
        cfg = self.config
        net = self.build_network(cfg.model)
        losses = CCTLossSettings(
            unsupervised=cfg.loss.unsupervised,
            conf_threshold=cfg.loss.conf_threshold,
            pairwise=cfg.loss.pairwise_weight > 0,
            pairwise_decoders=cfg.loss.pairwise_decoders,
            ignore_index=self.data.ignore_index,
        )
        return CCTModel(net, cfg.perturbations, self.background_classes, losses, num_domains=len(cfg.all_domains))

    @staticmethod
    def _source_names(domain: int) -> tuple[str, str]:
        return ("labeled", "unlabeled") if domain == 0 else (f"labeled_{domain}", f"unlabeled_{domain}")

    def train_sources(self) -> dict[str, Source]:
        """``labeled`` and ``unlabeled`` batches (and ``labeled_<d>`` / ``unlabeled_<d>`` of every further
        domain d, with the same batch sizes)."""
        cfg = self.config
        sources = {}
        for d, data in enumerate(self.domain_data):
            lab, unl = self._source_names(d)
            sources[lab] = Source(data.labeled, cfg.train.batch_size)
            sources[unl] = Source(data.unlabeled, cfg.unlabeled_batch_size or cfg.train.batch_size)
        return sources

    def _domain_batch(self, batch: dict, unlabeled: bool, *keys: str) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """``keys`` of every domain's labeled (or unlabeled) batch, each concatenated over the domains, and the
        per-image domain ids (None with one domain)."""
        sources = [batch[self._source_names(d)[int(unlabeled)]] for d in range(len(self.domain_data))]
        if len(sources) == 1:
            return [sources[0][k] for k in keys], None
        values = [torch.cat([source[k] for source in sources]) for k in keys]
        device = values[0].device
        ids = torch.cat(
            [torch.full((s[keys[0]].shape[0],), d, dtype=torch.long, device=device) for d, s in enumerate(sources)]
        )
        return values, ids

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return self.encoder_param_groups(model, self.config.model.backbone_lr_scale)

    def weights(self, step: int, total_steps: int) -> tuple[float, float]:
        """``(w_u(t), w_w(t))``: sigmoid ramp-up over ``loss.rampup`` of training;
        ``w_w = weak.weight * w_u / w``."""
        loss = self.config.loss
        ramp = consistency_weight(step, int(loss.rampup * total_steps), 1.0)
        return loss.unsup_weight * ramp, self.config.weak.weight * ramp

    def training_step(self, model: nn.Module, batch: dict, step: int, total_steps: int) -> StepOutput:
        cfg = self.config
        (images_l, mask), domains_l = self._domain_batch(batch, False, "image", "mask")
        (images_u,), domains_u = self._domain_batch(batch, True, "image")
        out = model(
            images_l,
            images_u,
            mode="train",
            pseudo_labels=batch["unlabeled"].get("mask") if cfg.weak.labels_dir else None,
            domains_l=domains_l,
            domains_u=domains_u,
        )
        logits = out["logits_l"].float()
        ignore = self.data.ignore_index
        if cfg.loss.supervised == "abce":
            ramp_steps = int(cfg.loss.abce_rampup * total_steps)
            threshold = abce_threshold(step, ramp_steps, logits.shape[1])
            loss_s = abce_loss(logits, mask, threshold, cfg.loss.abce_min_kept, ignore)
        else:
            # Mean over the labeled pixels of the global batch: the same value with 1 or N processes.
            total = F.cross_entropy(logits, mask, ignore_index=ignore, reduction="sum")
            loss_s = global_mean(total, (mask != ignore).sum())
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

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """mIoU, pixel accuracy and per-class IoU on the val split. With several domains each domain's val split
        is evaluated with its own main decoder (keys suffixed ``_d<domain>``) and ``miou`` / ``pixel_accuracy``
        are the means over the domains."""
        per_domain = [
            evaluate_segmentation(
                self.predictor(model, d), data.val, data.num_classes, self.config.eval, device, data.class_names
            )
            for d, data in enumerate(self.domain_data)
        ]
        if len(per_domain) == 1:
            return per_domain[0]
        metrics = {f"{k}_d{d}": v for d, values in enumerate(per_domain) for k, v in values.items()}
        for key in ("miou", "pixel_accuracy"):
            metrics[key] = sum(values[key] for values in per_domain) / len(per_domain)
        return metrics
