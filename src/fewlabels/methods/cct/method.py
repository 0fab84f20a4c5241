"""CCT as a :class:`~fewlabels.methods.base.Method`: data, model, training step, evaluation, prediction.

Data, model backbone, evaluation and prediction are the supervised baseline's
(``methods/supervised/common.py``),
so that a CCT-vs-baseline difference comes from the method only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.methods.base import Method, Source, StepOutput
from fewlabels.methods.cct.config import CCTConfig
from fewlabels.methods.cct.losses import abce_loss, abce_threshold, consistency_weight
from fewlabels.methods.cct.model import CCTLossSettings, CCTModel
from fewlabels.methods.supervised.common import (
    SegData,
    backbone_param_groups,
    build_model,
    build_segmentation_data,
    evaluate_segmentation,
    predict_masks,
    segmentation_figure,
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
class CCTMethod(Method):
    """Cross-consistency training: ``L = L_s + w_u(t) L_u (+ w_w(t) L_w) (+ lambda_pw L_pw)``."""

    name = "cct"
    description = "semi-supervised segmentation by cross-consistency training (CCT, Ouali et al. 2020)"
    config_class = CCTConfig
    metric = "miou"
    metric_mode = "max"
    config: CCTConfig

    @cached_property
    def data(self) -> SegData:
        data = build_segmentation_data(self.config.data)
        if self.config.weak.labels_dir:
            from fewlabels.methods.cct.weak import PseudoLabeledImages

            data.unlabeled = PseudoLabeledImages(data.unlabeled, self.config.weak.labels_dir)
        return data

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
        net = build_model(cfg.model, self.data.num_classes)
        losses = CCTLossSettings(
            unsupervised=cfg.loss.unsupervised,
            conf_threshold=cfg.loss.conf_threshold,
            pairwise=cfg.loss.pairwise_weight > 0,
            pairwise_decoders=cfg.loss.pairwise_decoders,
            ignore_index=self.data.ignore_index,
        )
        return CCTModel(net, cfg.perturbations, self.background_classes, losses)

    def train_sources(self) -> dict[str, Source]:
        cfg = self.config
        return {
            "labeled": Source(self.data.labeled, cfg.train.batch_size),
            "unlabeled": Source(self.data.unlabeled, cfg.unlabeled_batch_size or cfg.train.batch_size),
        }

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return backbone_param_groups(model, self.config.model.backbone_lr_scale)

    def weights(self, step: int, total_steps: int) -> tuple[float, float]:
        """``(w_u(t), w_w(t))``: sigmoid ramp-up over ``loss.rampup`` of training;
        ``w_w = weak.weight * w_u / w``."""
        loss = self.config.loss
        ramp = consistency_weight(step, int(loss.rampup * total_steps), 1.0)
        return loss.unsup_weight * ramp, self.config.weak.weight * ramp

    def training_step(self, model: nn.Module, batch: dict, step: int, total_steps: int) -> StepOutput:
        cfg = self.config
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        out = model(
            labeled["image"],
            unlabeled["image"],
            mode="train",
            pseudo_labels=unlabeled.get("mask") if cfg.weak.labels_dir else None,
        )
        logits, mask = out["logits_l"].float(), labeled["mask"]
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
    def predictor(self, model: nn.Module):
        """Logits function of the main decoder (what evaluation, prediction and figures use)."""
        cct = _unwrap(model)
        return lambda images: cct(images, mode="predict")

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return evaluate_segmentation(
            self.predictor(model),
            self.data.val,
            self.data.num_classes,
            self.config.eval,
            device,
            self.data.class_names,
        )

    def predict(self, model: nn.Module, inputs: Sequence[Path], out_dir: Path, device: torch.device) -> list[Path]:
        return predict_masks(self.predictor(model), inputs, out_dir, self.data.num_classes, self.config.eval, device)

    def report_figures(self, model: nn.Module, out_dir: Path, device: torch.device) -> dict[str, Path]:
        path = segmentation_figure(
            {"CCT": self.predictor(model)},
            self.data.val,
            self.data.num_classes,
            out_dir / "predictions.png",
            device,
        )
        return {"validation images: image / ground truth / CCT prediction": path}
