"""AC as a :class:`~fewlabels.methods.base.Method`, and the IIC baseline as its ``mask_from=none`` variant.

One training step (``mask_from != none``): two different orderings (drawn from a torch generator seeded by
``(seed, step)``: identical on every process and after a resume), both views' per-pixel cluster distributions in
one batched forward (the unmasked stem of F2 runs once for both views), and ``iic_segmentation_loss`` between
them, with the pair counts summed over processes so that N processes compute the loss of the global batch. With
``mask_from=none`` (F4, the IIC baseline) the two views are photometric jitter and a random horizontal flip of the
same images, drawn per image from the sample generator (``views.TwoViewDataset``); the flip is undone on the
second view's output so that pixels stay aligned. Same network, loss and budget. We register the baseline as this
method with ``model.mask_from=none`` rather than as a second name, so that both share every line of data,
evaluation and prediction code.

Over-clustering (IIC): with ``model.k_over > 0`` the over-clustering head (``loss.lamb_over``, IIC 1.0) and the main
head (``loss.lamb``, IIC 1.5 / 1.0) are trained in turn: every step (``loss.head_alternation=step``, default: both
heads move at any run length), or every pass over the training images (``epoch``, IIC's schedule, over-clustering
head first).

Other views (the thesis' open question, ``views.kind``): ``random`` draws, per view, a random permutation of the
ordered part's positions as the autoregressive order (per-position masks, ``masked_conv``); ``dropout`` runs the
network without masks and makes the two views with two element-dropout masks. Both evaluate mask-free.

Data, prediction I/O and figures are those of :class:`~fewlabels.methods.segmentation.SegmentationMethod`; AC
overrides its predictor (cluster probabilities, in class order once evaluation has matched them), its evaluation
protocol and the files it predicts.

Evaluation (IIC protocol): labels are used only here. The ``k x k`` vote matrix between clusters and classes
over the evaluation images is matched one-to-one (Hungarian), then pixel accuracy and mIoU are computed on
labelled pixels. The matching is stored in the model (buffer ``cluster_to_class``) so that ``predict`` colours
clusters by class. A trained run predicts without its data: the number of clusters is read from its saved head, the
image channels from the dataset's metadata (:meth:`ACMethod.prepare_inference`).

Our choices where the paper is silent: the V/H channel-type masking (``masked_conv``), the network (``model``) and the
per-step head alternation (IIC alternates per epoch: ``loss.head_alternation``). Inference follows the thesis: the
masks are removed and the shared weights run as a plain segmentation network (``model.inference=plain``, the
default); the mean over the 8 masked views is an option (``model.inference=ensemble``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.data.base import DataError
from fewlabels.data.registry import build_unsupervised_data
from fewlabels.data.unsupervised import PREDICTION_SUFFIXES, UnsupervisedData, read_input_image
from fewlabels.methods.ac.batchnorm import image_batches, reestimate_batchnorm
from fewlabels.methods.ac.config import ACConfig
from fewlabels.methods.ac.losses import information_loss, information_terms, normalise_joint, segmentation_counts
from fewlabels.methods.ac.masked_conv import set_view_orderings, zero_masked_weights
from fewlabels.methods.ac.model import RANDOM_ORDERING, ACNet
from fewlabels.methods.ac.orderings import ORDERINGS
from fewlabels.methods.ac.views import TwoViewDataset, global_sum, sample_orderings, step_generator
from fewlabels.methods.base import Source, StepOutput
from fewlabels.methods.segmentation.method import LogitsFn, SegmentationMethod, saved_shapes
from fewlabels.progress import Progress
from fewlabels.registry import register_method

__all__ = ["ACExport", "ACMethod", "ACModel", "hungarian_from_votes"]


class ACModel(ACNet):
    """:class:`ACNet` plus the cluster -> class matching of the last evaluation (-1 = not matched yet)."""

    cluster_to_class: torch.Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("cluster_to_class", torch.full((self.k,), -1, dtype=torch.long))


class ACExport(nn.Module):
    """The predictor of an AC run as a module: ``images [N, C, H, W]`` in ``[0, 1]`` -> cluster probabilities
    ``[N, k, H, W]`` (main head), channel ``m(c)`` holding cluster ``c`` once an evaluation has matched clusters to
    classes (as :meth:`ACMethod.predictor`).

    ``plain`` inference (the run's default, the thesis' inference) runs the network without masks; ``ensemble`` the
    mean over the 8 masked raster orderings. A copy of the network is held with its masks set once for that
    inference, so the forward neither toggles module state nor returns a dict (both defeat tracing); the
    over-clustering head is left out.
    """

    order: torch.Tensor | None

    def __init__(self, model: ACModel, inference: str = "plain") -> None:
        super().__init__()
        net = copy.deepcopy(model)
        self.ensemble = inference == "ensemble" and net.uses_orderings
        net.masked = self.ensemble
        if self.ensemble:
            set_view_orderings(net.ordered, tuple(range(len(ORDERINGS))))
        self.unmasked, self.ordered, self.head = net.unmasked, net.ordered, net.head
        mapping = model.cluster_to_class.detach().cpu()
        order = None
        if bool((mapping >= 0).all()):  # out[:, m(c)] = probs[:, c]: a gather by the inverse permutation
            order = torch.empty_like(mapping)
            order[mapping] = torch.arange(len(mapping))
            order = order.to(model.cluster_to_class.device)
        self.register_buffer("order", order)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.unmasked(images)
        views = len(ORDERINGS) if self.ensemble else 1
        if views > 1:
            features = torch.cat([features] * views)
        logits = self.head(self.ordered(features))
        size = (images.shape[-2], images.shape[-1])
        probs = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(dim=1)
        if views > 1:
            probs = probs.unflatten(0, (views, -1)).mean(dim=0)
        return probs if self.order is None else probs.index_select(1, self.order)


def hungarian_from_votes(votes: torch.Tensor) -> torch.Tensor:
    """One-to-one cluster -> class map maximising agreement, from ``votes[y, c]`` (rows class, cols cluster).

    Same matching as :func:`fewlabels.metrics.hungarian_match`, but from an accumulated ``[K, K]`` matrix so
    that evaluation never holds every pixel of the dataset. Returns ``[K]`` int64, ``m[c]`` = class of cluster
    ``c``.
    """
    rows, cols = scipy.optimize.linear_sum_assignment(votes.T.cpu().numpy(), maximize=True)
    mapping = torch.empty(votes.shape[0], dtype=torch.long)
    mapping[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return mapping


def _unwrap(model: nn.Module) -> ACModel:
    inner = getattr(model, "module", model)  # DDP-wrapped or not
    if not isinstance(inner, ACModel):
        raise TypeError(f"expected an ACModel, got {type(inner).__name__}")
    return inner


@register_method
class ACMethod(SegmentationMethod[ACConfig, UnsupervisedData]):
    """Autoregressive clustering (orderings as views + mutual information); ``mask_from=none`` = IIC baseline."""

    name = "ac"
    description = "AC: unsupervised segmentation, orderings as views + mutual information (mask_from=none: IIC)"
    config_class = ACConfig
    metric = "pixel_accuracy"
    metric_mode = "max"
    figure_file = "ac_clusters.png"
    figure_column = "clusters (matched)"
    figure_caption = "evaluation images: image / ground truth / clusters"
    input_suffixes = PREDICTION_SUFFIXES
    output_names = ("{stem}_clusters.png", "{stem}_colour.png")
    #: the clusters of the main head of a trained run, read from its weights by :meth:`prepare_inference` (then
    #: building the model and predicting read no data)
    restored_k: int | None = None

    # --- data and model -------------------------------------------------------------------------------------
    def build_data(self) -> UnsupervisedData:
        """Training images (random ``input_size`` crops) and evaluation images (centre ``eval_input_size`` crops,
        default ``input_size``; with the image side, whole images)."""
        d = self.config.data

        def build(size: int) -> UnsupervisedData:
            return build_unsupervised_data(
                d.dataset, d.root, d.split, d.eval_split, size, d.scale, d.scenes_n, d.scenes_size, self.config.seed
            )

        data = build(d.input_size)
        if d.eval_input_size and d.eval_input_size != d.input_size:
            data.eval = build(d.eval_input_size).eval
        return data

    def prepare_inference(self, run_dir: Path, weights: Path) -> None:
        """Before a trained run's model is built: its clusters from the rows of the saved main head (of ``weights``,
        else of another of the run's weight files), so that predicting needs no data. The cluster -> class matching
        of its last evaluation is in the weights too (``cluster_to_class``)."""
        for path in (weights, run_dir / "best.safetensors", run_dir / "model.safetensors"):
            shape = saved_shapes(path).get("head.weight") if path.is_file() else None
            if shape:
                self.restored_k = int(shape[0])
                return

    @property
    def k(self) -> int:
        """Clusters of the main head: ``model.k``, else those of the trained run (:meth:`prepare_inference`), else
        the dataset's number of classes."""
        k = self.config.model.k or self.restored_k or self.data.num_classes
        if not k:
            raise DataError(
                f"{self.config.data.dataset}: the number of classes is unknown (no classes.txt or masks); set "
                "model.k to the number of clusters"
            )
        return int(k)

    @property
    def num_classes(self) -> int:
        """The clusters of the main head: their matched classes colour predictions and figures."""
        return self.k

    @property
    def in_channels(self) -> int:
        """Image channels: the dataset's metadata for a trained run (no data read), else the data's."""
        if self.restored_k is not None:
            return self.config.data.spec.metadata.in_channels
        return self.data.in_channels

    def build_model(self) -> nn.Module:
        m = self.config.model
        model = ACModel(
            in_channels=self.in_channels,
            widths=tuple(m.widths),
            decoder_blocks=m.decoder_blocks,
            mask_from=m.mask_from,
            k=self.k,
            k_over=m.k_over,
            attention=m.attention,
            attention_heads=m.attention_heads,
            vertical_fraction=m.vertical_fraction,
            sobel=m.sobel,
            sobel_keep=m.sobel_keep,
        )
        if self.config.views.kind == "dropout":
            model.masked = False  # dropout views: the plain network, in training and at inference
        return model

    def train_sources(self) -> dict[str, Source]:
        views = self.config.views
        train = self.data.train
        if views.jitter > 0 or views.flip:
            train = TwoViewDataset(train, views.jitter, views.flip)
        return {"images": Source(train, self.config.train.batch_size)}

    # --- training -------------------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, batch: dict, step: int, total_steps: int) -> StepOutput:
        cfg = self.config
        data = batch["images"]
        stacked = "image2" in data  # augmented views (TwoViewDataset), else the same images under two orderings
        inputs = torch.cat([data["image"], data["image2"]]) if stacked else data["image"]
        generator = step_generator(cfg.seed, step)
        orderings: tuple[str, ...] | None = None
        if cfg.model.mask_from != "none":
            orderings = sample_orderings(generator) if cfg.views.kind == "raster" else (RANDOM_ORDERING,) * 2
        dropout = cfg.views.dropout if cfg.views.kind == "dropout" else 0.0
        out = model(inputs, orderings=orderings, stacked_views=stacked, generator=generator, dropout=dropout)
        flipped = data["flipped"].view(-1, 1, 1, 1) if "flipped" in data else None

        def aligned_views(head: str) -> tuple[torch.Tensor, torch.Tensor]:
            first_view, second_view = out[head].float().chunk(2)
            if flipped is not None:  # undo the flip so that pixel u of both views shows the same image point
                second_view = torch.where(flipped, second_view.flip(-1), second_view)
            return first_view, second_view

        heads = ["main"] + (["over"] if "over" in out else [])
        active = heads[self._head_turn(step) % len(heads)]
        lamb = cfg.loss.lamb if active == "main" else cfg.loss.lamb_over
        p1, p2 = aligned_views(active)
        valid = None
        if cfg.loss.ignore_unlabelled and "mask" in data:
            valid = data["mask"] != self.data.ignore_index
        counts = global_sum(segmentation_counts(p1, p2, cfg.loss.displacement, cfg.loss.collapsed, valid))
        loss = information_loss(normalise_joint(counts), lamb)
        for other in heads:
            if other != active:
                # keeps the idle head in the graph with a zero gradient, so DDP sees every parameter used
                loss = loss + 0.0 * out[other].sum()
        # Logged every step for the main head with the same keys (the engine averages each key over a window):
        # the collapsed joint, a cheap O(B k H W) sum, so the numbers mean the same with either loss form.
        with torch.no_grad():
            m1, m2 = (p1, p2) if active == "main" else aligned_views("main")
            logged = global_sum(segmentation_counts(m1, m2, cfg.loss.displacement, True, valid))
        return StepOutput(loss, dict(information_terms(normalise_joint(logged))))

    def _head_turn(self, step: int) -> int:
        """Even: the main head trains at ``step``; odd: the over-clustering head (when there is one).

        ``step`` mode alternates every step (main first); ``epoch`` mode every pass over the training images, the
        over-clustering head first (IIC: head A, then head B, in each epoch)."""
        if self.config.loss.head_alternation == "step":
            return step
        steps_per_pass = max(1, len(self.data.train) // self.config.train.batch_size)
        return step // steps_per_pass + 1

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        # Masked taps get no gradient, but weight decay on restored/perturbed weights must not revive them.
        zero_masked_weights(model)

    # --- evaluation -----------------------------------------------------------------------------------------
    def _probabilities(self, model: ACModel, images: torch.Tensor) -> torch.Tensor:
        return model.cluster_probabilities(images, self.config.model.inference)

    def predictor(self, model: nn.Module) -> LogitsFn:
        """Cluster probabilities ``[B, k, H, W]``, with channel ``m(c)`` holding cluster ``c`` once an evaluation has
        matched clusters to classes (so that their argmax is the matched class), in cluster order before."""
        ac = _unwrap(model)

        def class_scores(images: torch.Tensor) -> torch.Tensor:
            probs = self._probabilities(ac, images)
            mapping = ac.cluster_to_class.to(probs.device)
            if not bool((mapping >= 0).all()):
                return probs
            return torch.empty_like(probs).index_copy_(1, mapping, probs)

        return class_scores

    def reestimate_batchnorm(self, model: ACModel, device: torch.device) -> int:
        """With ``eval.bn_reestimate`` = N: the BatchNorm statistics of the mask-free network re-estimated on N
        training batches (:mod:`~fewlabels.methods.ac.batchnorm`; the same images at every evaluation, drawn with the
        run's seed). Returns the batches used (0 when off)."""
        count = self.config.eval.bn_reestimate
        if not count:
            return 0
        batches = image_batches(self.data.train, count, self.config.train.batch_size, self.config.seed, device)
        return reestimate_batchnorm(model, batches, lambda images: model.cluster_probabilities(images, "plain"))

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        from fewlabels.metrics import iou, miou, pixel_accuracy

        assert isinstance(model, ACModel)
        reestimated = self.reestimate_batchnorm(model, device)
        dataset, k = self.data.eval, self.k
        n = len(dataset) if not self.config.data.eval_images else min(self.config.data.eval_images, len(dataset))
        votes = torch.zeros(k, k, dtype=torch.long, device=device)  # [class, cluster]
        usage = torch.zeros(k, dtype=torch.float64, device=device)
        bs = self.config.data.eval_batch_size
        with Progress(n, "eval", "images") as progress:
            start = 0
            while start < n:
                items = [dataset[start]]
                # batch only images of one shape (whole COCO images differ in size)
                while len(items) < bs and start + len(items) < n:
                    nxt = dataset[start + len(items)]
                    if nxt["image"].shape != items[0]["image"].shape:
                        break
                    items.append(nxt)
                start += len(items)
                if "mask" not in items[0]:
                    raise DataError("evaluation needs ground-truth masks (labels are used only to match clusters)")
                images = torch.stack([it["image"] for it in items]).to(device)
                target = torch.stack([it["mask"] for it in items]).to(device)
                pred = self._probabilities(model, images).argmax(1)
                keep = target != self.data.ignore_index
                if bool((target[keep] >= k).any()):
                    raise DataError(
                        f"evaluation masks hold class {int(target[keep].max())} but the model has k = {k} clusters; "
                        "Hungarian matching needs k = number of classes (set model.k)"
                    )
                votes += torch.bincount(target[keep] * k + pred[keep], minlength=k * k).view(k, k)
                usage += torch.bincount(pred.flatten(), minlength=k).double()
                progress.update(len(items))
        mapping = hungarian_from_votes(votes)
        model.cluster_to_class.copy_(mapping)
        matched = torch.zeros_like(votes)
        matched.index_add_(1, mapping.to(device), votes)  # column c -> column m(c)
        usage = usage / usage.sum().clamp(min=1)
        entropy = float(-(usage * usage.clamp(min=1e-12).log()).sum())
        out = {"pixel_accuracy": pixel_accuracy(matched), "miou": miou(matched), "cluster_entropy": entropy}
        # every printed result says what it was measured on (a subset when data.eval_images < the eval set)
        out["eval_images"] = float(n)
        out["eval_images_available"] = float(len(dataset))
        out["eval_pixels"] = float(votes.sum())
        if self.config.eval.bn_reestimate:
            out["bn_reestimate_batches"] = float(reestimated)
        for c, v in enumerate(iou(matched).tolist()):
            if not np.isnan(v):
                out[f"iou/{self.data.class_names[c]}"] = float(v)
        return out

    # --- export ---------------------------------------------------------------------------------------------
    export_output = "probabilities"

    def export_network(self, model: nn.Module) -> nn.Module:
        """The run's inference (``model.inference``: ``plain``, mask-free, by default) with the cluster -> class
        matching of its last evaluation: :class:`ACExport`."""
        return ACExport(_unwrap(model), self.config.model.inference)

    def export_image_shape(self, model: nn.Module) -> tuple[int, int]:
        return int(self.in_channels), self.config.data.input_size

    def export_metadata(self, model: nn.Module) -> dict[str, Any]:
        ac = _unwrap(model)
        matched = bool((ac.cluster_to_class >= 0).all())
        names = list(self.config.data.spec.metadata.class_names)  # the dataset's metadata: no data read
        meta: dict[str, Any] = {
            "clusters": self.k,
            "matched": matched,
            "classes": names if matched and len(names) == self.k else [f"cluster_{c}" for c in range(self.k)],
            "inference": self.config.model.inference if ac.uses_orderings else "plain",
            "normalisation": {"inside": True, "note": "none: the network reads images in [0, 1]"},
        }
        if self.config.data.scale != 1.0:
            meta["preprocessing"] = f"the run's predict rescales each image by data.scale={self.config.data.scale}"
        return meta

    # --- inference ------------------------------------------------------------------------------------------
    def predict_image(self, model: nn.Module, path: Path, out_dir: Path, device: torch.device) -> list[Path]:
        """``<stem>_clusters.png`` (cluster indices 0..k-1) and ``<stem>_colour.png`` (coloured by the matched class
        when an evaluation has matched clusters, else by cluster index); images or Potsdam ``.mat`` tiles."""
        from PIL import Image

        from fewlabels.viz import colorize

        ac = _unwrap(model)
        image = read_input_image(path, self.in_channels, self.config.data.scale)
        clusters = self._probabilities(ac, image.unsqueeze(0).to(device)).argmax(1)[0]
        cluster_path = out_dir / f"{self.output_stem(path)}_clusters.png"
        Image.fromarray(clusters.cpu().numpy().astype(np.uint8)).save(cluster_path)
        mapping = ac.cluster_to_class.to(clusters.device)
        labels = mapping[clusters] if bool((mapping >= 0).all()) else clusters
        colour_path = out_dir / f"{self.output_stem(path)}_colour.png"
        Image.fromarray(colorize(labels.cpu().numpy().astype(np.uint8), self.k)).save(colour_path)
        return [cluster_path, colour_path]
