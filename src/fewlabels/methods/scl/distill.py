"""``scl-distill``: second-stage self-distillation from a frozen teacher run (RFS-style, with SCL's feature
term).

    loss = lambda_kl * T^2 KL(softmax(t/T) || softmax(s/T)) + lambda_contrast * (2 - 2 cos(f_s, f_t))
           [+ lambda_spatial * mean over batch and positions of (2 - 2 cos) between the C-vectors of the
              spatial maps] [+ the scl loss terms of ``loss.*``]

The student has the teacher's architecture (the same ``model`` section). The teacher is read from its run
directory (``config.yaml`` + ``model.safetensors`` or ``best.safetensors``) when training starts, kept outside
the student's module tree (not saved, not trained, not wrapped by DDP) and always run in eval mode without
gradient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewlabels.config import read_yaml
from fewlabels.data.base import DataError
from fewlabels.methods.base import StepOutput
from fewlabels.methods.scl.config import FewShotConfig, SCLDistillConfig
from fewlabels.methods.scl.losses import contrast_distill, distill_kl, spatial_contrast_distill
from fewlabels.methods.scl.method import SCLMethod, build_net
from fewlabels.methods.scl.model import SCLNet
from fewlabels.registry import config_from_dict, register_method


def load_teacher(run_dir: str | Path, which: str = "last") -> SCLNet:
    """Rebuild a trained few-shot network from its run directory and load its weights (frozen, eval mode)."""
    from safetensors.torch import load_file

    run = Path(run_dir).expanduser()
    cfg_path = run / "config.yaml"
    weights = run / ("best.safetensors" if which == "best" else "model.safetensors")
    for p in (cfg_path, weights):
        if not p.is_file():
            raise DataError(
                f"teacher {p.name} not found in {run}: distill.teacher must be a finished scl run directory"
            )
    config = config_from_dict(read_yaml(cfg_path))
    if not isinstance(config, FewShotConfig):
        raise DataError(f"teacher run {run} is a {config.method!r} run, not a few-shot (scl) run")
    state = load_file(str(weights))
    if "classifier.weight" not in state:
        raise DataError(f"teacher weights {weights} have no classifier: a teacher must be an scl/scl-distill run")
    num_classes = int(state["classifier.weight"].shape[0])
    teacher = build_net(
        config,
        num_classes,
        global_head=any(k.startswith("global_head.") for k in state),
        spatial_head=any(k.startswith("spatial_head.") for k in state),
    )
    teacher.load_state_dict(state, strict=True)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.eval()


@register_method
class SCLDistillMethod(SCLMethod[SCLDistillConfig]):
    """Self-distillation of an scl teacher into a student of the same architecture."""

    name = "scl-distill"
    description = "few-shot classification: distillation from a frozen scl teacher (KL + feature contrast)"
    config_class = SCLDistillConfig

    def training_step(
        self, model: nn.Module, batch: dict[str, dict[str, Any]], step: int, total_steps: int
    ) -> StepOutput:
        core = getattr(model, "module", model)
        assert isinstance(core, SCLNet)
        if core.teacher is None:
            # Loaded lazily (not in build_model) so that evaluating or predicting with a finished student does
            # not need the teacher's run directory any more.
            device = next(core.parameters()).device
            # Building the teacher initialises layers from torch's global RNG; fork it so the training stream
            # is the same whether the teacher is loaded at step 0 or at the first step after a resume.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                teacher = load_teacher(self.config.distill.teacher, self.config.distill.weights)
            core.attach_teacher(teacher.to(device))
        d = self.config.distill
        images, labels = batch["base"]["image"], batch["base"]["label"]
        views = len(self.config.augment.views)
        with torch.no_grad():
            x = self.augment(images.float())
        out = model(x, mode="distill")
        total, logs = self.weighted_loss(out, labels, views)
        if d.lambda_kl > 0:
            kl = distill_kl(out["logits"].float(), out["teacher_logits"].float(), d.temperature)
            logs["kl"] = kl.detach()
            total = total + d.lambda_kl * kl
        if d.lambda_contrast > 0:
            feat = contrast_distill(out["pooled"].float(), out["teacher_pooled"].float())
            logs["feature_distill"] = feat.detach()
            total = total + d.lambda_contrast * feat
        if d.lambda_spatial > 0:
            spatial = spatial_contrast_distill(out["spatial"].float(), out["teacher_spatial"].float())
            logs["spatial_distill"] = spatial.detach()
            total = total + d.lambda_spatial * spatial
        return StepOutput(total, logs)
