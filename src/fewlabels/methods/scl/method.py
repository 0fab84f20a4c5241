"""The ``scl`` method: pre-training on merged base classes with CE and the GC / SC regularisers.

One training step (``training_step``): augment the batch into two views (view-major ``[2B, C, S, S]``), run
the network once in ``mode="train"``, then

    loss = lambda_cls * CE(both views) + lambda_sc * SupCon(S_spatial, y) + lambda_gc * SupCon(S_global, y)
           + lambda_ss_sc * SupCon(S_spatial, None) + lambda_ss_gc * SupCon(S_global, None)

Under DDP the contrastive terms are computed on the features of the whole global batch (gathered with
gradient), so that a distributed run optimises the same objective as a single process with the same global
batch.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.data.fewshot import FewShotDataset
from fewlabels.data.registry import load_fewshot
from fewlabels.methods.base import ExportSpec, Method, Source, StepOutput
from fewlabels.methods.scl.augment import MultiViewAugment
from fewlabels.methods.scl.backbones import build_backbone
from fewlabels.methods.scl.config import FewShotConfig, SCLConfig
from fewlabels.methods.scl.fewshot_eval import embed, fewshot_evaluate
from fewlabels.methods.scl.losses import spatial_similarity, supcon_loss
from fewlabels.methods.scl.model import NORMALISATION, SCLNet, resolve_normalisation
from fewlabels.parallel import gather_with_grad
from fewlabels.progress import track
from fewlabels.registry import register_method


def load_split(config: FewShotConfig, split: str) -> FewShotDataset:
    """The ``train`` (base), ``val`` or ``test`` (novel) split of the configured dataset."""
    data = config.data
    return load_fewshot(
        data.dataset,
        data.root,
        split,
        data.resolved_image_size(),
        data.split_file,
        per_class=data.glyphs_per_class,
        seed=data.glyphs_seed,
    )


def build_net(config: FewShotConfig, num_classes: int, global_head: bool = False, spatial_head: bool = False) -> SCLNet:
    """The network of a few-shot config (backbone from ``config.model``)."""
    m = config.model
    backbone = build_backbone(
        m.backbone,
        image_size=config.data.resolved_image_size(),
        drop_rate=m.drop_rate,
        block_size=m.dropblock_size or None,
        ramp_steps=m.dropblock_ramp_steps,
    )
    mean, std = NORMALISATION[resolve_normalisation(m.normalisation, config.data.spec.name)]
    return SCLNet(backbone, num_classes, global_head=global_head, spatial_head=spatial_head, mean=mean, std=std)


def classifier_rows(weights: Path) -> int | None:
    """Rows of ``classifier.weight`` in a safetensors file: 0 when the network has none (ProtoNet), ``None`` when
    the file is not a readable safetensors file (e.g. a training checkpoint)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            if "classifier.weight" not in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                return 0
            return int(fh.get_slice("classifier.weight").get_shape()[0])
    except (SafetensorError, OSError):
        return None


def _gather_views(x: Tensor, views: int) -> Tensor:
    """All-gather ``x [V*b, ...]`` across processes into ``[V*world*b, ...]`` keeping view-major order."""
    chunks = x.reshape(views, -1, *x.shape[1:])
    return gather_with_grad(chunks, dim=1).reshape(-1, *x.shape[1:])


def _gather_labels(y: Tensor) -> Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return y
    out = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(out, y.contiguous())
    return torch.cat(out)


class FewShotFeatures(nn.Module):
    """The feature extractor of a few-shot run as a module: ``images [N, C, S, S]`` in ``[0, 1]`` (normalised
    inside) -> the L2-normalised features that the episode classifier fits on (:func:`~.fewshot_eval.embed`):
    ``pooled [N, D]`` (global average) and ``spatial [N, 4 D]`` (2x2 max-pooled map, flattened)."""

    def __init__(self, net: SCLNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        spatial, pooled = self.net.features(images)
        spatial = spatial.float()
        # F.adaptive_max_pool2d(spatial, 2) (what embed computes), written as the max over its four cells: the ONNX
        # exporter has no adaptive max pooling. Cell i of a side n spans floor(i n / 2) .. ceil((i + 1) n / 2).
        h, w = spatial.shape[-2], spatial.shape[-1]
        rows, cols = ((0, (h + 1) // 2), (h // 2, h)), ((0, (w + 1) // 2), (w // 2, w))
        cells = [spatial[..., r0:r1, c0:c1].amax(dim=(-2, -1)) for r0, r1 in rows for c0, c1 in cols]
        grid = torch.stack(cells, dim=-1)  # [N, D, 4], row-major cells: the flattening order of [N, D, 2, 2]
        return F.normalize(pooled.float(), dim=1), F.normalize(grid.flatten(1), dim=1)


#: the config class of a few-shot method (``FewShotMethod[FewShotConfigT]``)
FewShotConfigT = TypeVar("FewShotConfigT", bound=FewShotConfig)
#: the config class of SCL and of the methods built on it (``SCLMethod[SCLConfigT]``)
SCLConfigT = TypeVar("SCLConfigT", bound=SCLConfig)


class FewShotMethod(Method[FewShotConfigT]):
    """Shared plumbing of the few-shot methods: splits, episodic validation, prediction."""

    metric = "acc"
    metric_mode = "max"

    def __init__(self, config: FewShotConfigT) -> None:
        super().__init__(config)
        self._splits: dict[str, FewShotDataset] = {}
        #: Base classes of the pre-training classifier when known without reading the train split (read from the
        #: weights by :meth:`prepare_inference`, which ``load_run`` calls): an evaluation-only dataset has none.
        self.num_base_classes: int | None = None

    def prepare_inference(self, run_dir: Path, weights: Path) -> None:
        """Before a trained run's model is built: the base-class count from the weights (so that evaluating on a
        folder of test classes only never reads a training split) and the input statistics the run was trained
        with (``model.normalisation: auto`` resolved on the saved config, whatever ``data`` now points at)."""
        from fewlabels.config import read_yaml
        from fewlabels.registry import config_from_dict

        self.num_base_classes = classifier_rows(weights)
        saved = config_from_dict(read_yaml(str(run_dir / "config.yaml")))
        if isinstance(saved, FewShotConfig):
            self.config.model.normalisation = resolve_normalisation(  # type: ignore[assignment]
                saved.model.normalisation, saved.data.spec.name
            )

    def split(self, name: str) -> FewShotDataset:
        """The ``train`` (base), ``val`` or ``test`` (novel) split of the run's dataset, read once."""
        if name not in self._splits:
            self._splits[name] = load_split(self.config, name)
        return self._splits[name]

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Quick episodic validation: ``eval.val_episodes`` episodes per shot on the val split (percent).

        ``acc`` (the selection metric) is the mean over the configured shots; ``acc_{K}shot`` / ``ci95_{K}shot`` are
        reported for each.
        """
        ev = self.config.eval
        res = self.validation_episodes(model, device)
        out = {k: float(v) for k, v in res.items() if k.startswith(("acc_", "ci95_"))}
        out["acc"] = float(np.mean([res[f"acc_{k}shot"] for k in ev.shots]))
        return out

    def validation_episodes(self, model: nn.Module, device: torch.device, return_episodes: bool = False) -> dict:
        """``fewshot_evaluate`` on the seeded validation episodes of ``eval`` (selection metric and report)."""
        ev = self.config.eval
        return fewshot_evaluate(
            model,
            self.split("val"),
            shots=tuple(ev.shots),
            ways=ev.ways,
            queries=ev.queries,
            episodes=ev.val_episodes,
            seed=ev.seed,
            classifier=ev.classifier,
            features=ev.features,
            device=device,
            batch_size=ev.batch_size,
            return_episodes=return_episodes,
        )

    def report_figures(self, model: nn.Module, out_dir: Path, device: torch.device) -> dict[str, Path]:
        """Histogram of the accuracies of the validation episodes, one figure per number of shots."""
        from fewlabels.viz import save_histogram

        ev = self.config.eval
        res = self.validation_episodes(model, device, return_episodes=True)
        figures = {}
        for k in ev.shots:
            title = (
                f"{ev.ways}-way {k}-shot validation episodes: {res[f'acc_{k}shot']:.1f} +- {res[f'ci95_{k}shot']:.1f}"
            )
            path = save_histogram(
                res[f"episodes_{k}shot"], out_dir / f"episodes_{k}shot.png", title, "episode accuracy"
            )
            figures[f"{k}-shot episode accuracies ({ev.val_episodes} validation episodes)"] = path
        return figures

    def export_module(self, model: nn.Module) -> ExportSpec:
        """The feature extractor (:class:`FewShotFeatures`): ``images [N, C, S, S]`` at the run's image size ``S``,
        float32 in ``[0, 1]`` -> ``pooled [N, D]`` and ``spatial [N, 4 D]``, L2-normalised; N dynamic. The episode
        classifier (fitted per episode on support features) is not part of the artefact."""
        net = getattr(model, "module", model)
        if not isinstance(net, SCLNet):
            raise TypeError(f"{self.name}: expected an SCLNet, got {type(net).__name__}")
        size = self.config.data.resolved_image_size()
        channels = int(net.mean.shape[1])
        device = net.mean.device
        generator = torch.Generator().manual_seed(0)

        def images(n: int) -> dict[str, Tensor]:
            return {"images": torch.rand(n, channels, size, size, generator=generator).to(device)}

        def reference(x: Tensor) -> tuple[Tensor, Tensor]:
            features = embed(*net(x, mode="features"))
            return features["pooled"], features["spatial"]

        dim = int(net.backbone.out_channels)
        normalisation = resolve_normalisation(self.config.model.normalisation, self.config.data.spec.name)
        mean, std = NORMALISATION[normalisation]
        ev = self.config.eval
        return ExportSpec(
            module=FewShotFeatures(net).eval(),
            inputs=images(2),
            outputs=("pooled", "spatial"),
            dynamic_axes={"images": {0: "batch"}, "pooled": {0: "batch"}, "spatial": {0: "batch"}},
            reference=reference,
            check_inputs=[images(3), images(1)],
            description=(
                f"{self.name} feature extractor: images [N, {channels}, {size}, {size}] in [0, 1] -> "
                f"pooled [N, {dim}], spatial [N, {4 * dim}]"
            ),
            metadata={
                "inputs": {"images": f"float32 [N, {channels}, {size}, {size}], RGB in [0, 1] (normalised inside)"},
                "outputs": {
                    "pooled": f"float32 [N, {dim}]: the L2-normalised global average of the last feature map",
                    "spatial": f"float32 [N, {4 * dim}]: the L2-normalised 2x2 max-pooled feature map, flattened",
                },
                "image_size": size,
                "resize": "bilinear, to image_size x image_size (as the run's predict)",
                "normalisation": {"inside": True, "name": normalisation, "mean": list(mean), "std": list(std)},
                "episode_classifier": {"classifier": ev.classifier, "features": ev.features},
            },
        )

    def predict(self, model: nn.Module, inputs: Sequence[Path], out_dir: Path, device: torch.device) -> list[Path]:
        """Base-class predictions of image files -> ``predictions.csv`` (path, class, name, probability), or
        their L2-normalised pooled features -> ``features.npy`` for networks without a classifier."""
        from PIL import Image

        from fewlabels.data.base import to_chw_float
        from fewlabels.data.common import read_rgb

        out_dir.mkdir(parents=True, exist_ok=True)
        size = self.config.data.resolved_image_size()
        rows, feats = [], []
        for path in track(inputs, len(inputs), "predict", "images"):
            rgb = Image.fromarray(read_rgb(path))  # any mode (16-bit scaled); a DataError naming an undecodable file
            image = to_chw_float(np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR)))
            x = image[None].to(device)
            if getattr(model, "classifier", None) is not None:
                prob = model(x, mode="logits").softmax(dim=1)[0]
                rows.append((str(path), int(prob.argmax()), float(prob.max())))
            else:
                feats.append(F.normalize(model(x, mode="features")[1], dim=1)[0].cpu().numpy())
        if feats:
            target = out_dir / "features.npy"
            np.save(target, np.stack(feats))
            return [target]
        names = getattr(self.split("train"), "class_names", None)
        target = out_dir / "predictions.csv"
        with target.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "class", "name", "probability"])
            for p, c, pr in rows:
                writer.writerow([p, c, names[c] if names else c, f"{pr:.6f}"])
        return [target]


@register_method
class SCLMethod(FewShotMethod[SCLConfigT]):
    """Spatial contrastive pre-training (and its CE / GC / SS baselines, by loss weights)."""

    name = "scl"
    description = "few-shot classification: CE pre-training + spatial/global contrastive regularisers (SCL)"
    config_class = SCLConfig

    def __init__(self, config: SCLConfigT) -> None:
        super().__init__(config)
        self.augment = MultiViewAugment(config.augment.views, config.data.resolved_image_size())

    def build_model(self) -> nn.Module:
        loss = self.config.loss
        num_classes = self.num_base_classes
        if num_classes is None:
            num_classes = int(self.split("train").num_classes)
        return build_net(self.config, num_classes, global_head=loss.uses_global(), spatial_head=loss.uses_spatial())

    def train_sources(self) -> dict[str, Source]:
        return {"base": Source(self.split("train"), self.config.train.batch_size)}

    def contrastive_terms(self, out: dict[str, Tensor], labels: Tensor, views: int) -> dict[str, Tensor]:
        """The enabled GC / SC / SS-GC / SS-SC losses of a ``mode="train"`` output (unweighted)."""
        loss = self.config.loss
        terms: dict[str, Tensor] = {}
        if not loss.contrastive():
            return terms
        all_labels = _gather_labels(labels)
        if loss.uses_global():
            z = F.normalize(_gather_views(out["projection"], views).float(), dim=1)
            sim = z @ z.T
            if loss.lambda_gc > 0:
                terms["gc"] = supcon_loss(sim, all_labels, loss.inverse_temperature)
            if loss.lambda_ss_gc > 0:
                terms["ss_gc"] = supcon_loss(sim, None, loss.inverse_temperature)
        if loss.uses_spatial():
            # One collective for the three projections (the same shape): fewer messages than three gathers.
            qkv = _gather_views(torch.cat([out["q"], out["k"], out["v"]], dim=-1), views).float()
            q, k, v = qkv.chunk(3, dim=-1)
            sim = spatial_similarity(q, k, v, aggregation=loss.aggregation, lse_lambda=loss.lse_lambda)
            if loss.lambda_sc > 0:
                terms["sc"] = supcon_loss(sim, all_labels, loss.inverse_temperature)
            if loss.lambda_ss_sc > 0:
                terms["ss_sc"] = supcon_loss(sim, None, loss.inverse_temperature)
        return terms

    def weighted_loss(self, out: dict[str, Tensor], labels: Tensor, views: int) -> tuple[Tensor, dict[str, Any]]:
        loss = self.config.loss
        logs: dict[str, Any] = {}
        total = out["pooled"].new_zeros(())
        if "logits" in out:
            targets = labels.repeat(views)
            # The mean over the V * B rows is the average of the per-view CE (the reference's CE term).
            ce = F.cross_entropy(out["logits"].float(), targets)
            logs["ce"] = ce.detach()
            logs["train_acc"] = (out["logits"].argmax(dim=1) == targets).float().mean().detach()
            if loss.lambda_cls > 0:
                total = total + loss.lambda_cls * ce
        weights = {
            "gc": loss.lambda_gc,
            "sc": loss.lambda_sc,
            "ss_gc": loss.lambda_ss_gc,
            "ss_sc": loss.lambda_ss_sc,
        }
        for name, value in self.contrastive_terms(out, labels, views).items():
            logs[name] = value.detach()
            total = total + weights[name] * value
        return total, logs

    def training_step(
        self, model: nn.Module, batch: dict[str, dict[str, Any]], step: int, total_steps: int
    ) -> StepOutput:
        images, labels = batch["base"]["image"], batch["base"]["label"]
        with torch.no_grad():
            x = self.augment(images.float())
        out = model(x, mode="train")
        total, logs = self.weighted_loss(out, labels, len(self.config.augment.views))
        return StepOutput(total, logs)
