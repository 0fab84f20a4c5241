"""``protonet``: episodic metric learning (Snell et al. 2017), the metric-learning extension of the SCL
chapter.

Each training item is a whole ``ways``-way ``shots``-shot episode (:class:`EpisodicDataset`). Prototypes are
the class means of the support embeddings; a query's logits are ``-||f(x_q) - c_k||^2`` and the loss is their
cross-entropy. Support and query images go through the network in one forward call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.data.episodes import EpisodicDataset
from fewlabels.methods.base import Source, StepOutput
from fewlabels.methods.scl.augment import MultiViewAugment
from fewlabels.methods.scl.config import ProtoNetConfig
from fewlabels.methods.scl.method import FewShotMethod, build_net
from fewlabels.registry import register_method


def prototype_logits(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int
) -> torch.Tensor:
    """``-||q - c_k||^2`` for support ``[E, n_s, D]`` (labels ``[E, n_s]``), query ``[E, n_q, D]`` -> ``[E,
    n_q, W]``."""
    onehot = F.one_hot(support_labels.long(), ways).to(support.dtype)
    centroids = onehot.transpose(1, 2) @ support / onehot.sum(dim=1)[:, :, None]
    return -torch.cdist(query, centroids).square()


@register_method
class ProtoNetMethod(FewShotMethod[ProtoNetConfig]):
    """Prototypical networks trained episodically on the base classes."""

    name = "protonet"
    description = "few-shot classification: prototypical networks (episodic training, squared Euclidean)"
    config_class = ProtoNetConfig

    def __init__(self, config: ProtoNetConfig) -> None:
        super().__init__(config)
        views = ["standard"] if config.episodes.augment else ["none"]
        self.augment = MultiViewAugment(views, config.data.resolved_image_size())

    def build_model(self) -> nn.Module:
        return build_net(self.config, num_classes=0)

    def train_sources(self) -> dict[str, Source]:
        ep = self.config.episodes
        base = self.split("train")
        labels = base.labels
        episodes = EpisodicDataset(
            base,
            labels,
            ep.ways,
            ep.shots,
            ep.queries,
            ep.episodes_per_epoch,
        )
        return {"episodes": Source(episodes, self.config.train.batch_size)}

    def training_step(
        self, model: nn.Module, batch: dict[str, dict[str, Any]], step: int, total_steps: int
    ) -> StepOutput:
        b = batch["episodes"]
        support, query = b["support"], b["query"]  # [E, n, C, H, W]
        e, n_s = support.shape[:2]
        images = torch.cat([support.flatten(0, 1), query.flatten(0, 1)]).float()
        with torch.no_grad():
            images = self.augment(images)
        _, pooled = model(images, mode="features")
        feats = pooled.float()
        fs, fq = feats[: e * n_s].reshape(e, n_s, -1), feats[e * n_s :].reshape(e, query.shape[1], -1)
        logits = prototype_logits(fs, b["support_labels"], fq, self.config.episodes.ways)
        loss = F.cross_entropy(logits.flatten(0, 1), b["query_labels"].flatten())
        acc = (logits.argmax(dim=2) == b["query_labels"]).float().mean()
        return StepOutput(loss, {"train_acc": acc.detach()})
