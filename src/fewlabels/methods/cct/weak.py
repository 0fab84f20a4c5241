"""Weak labels for CCT: class activation maps (CAM) from image-level labels turned into pixel pseudo-labels.

Pipeline (thesis chapter 1, "weak labels"): a classifier (encoder + global average pooling + linear layer) is
trained with multi-label targets; for every image its CAMs ``relu(w_c . f(x))`` are computed at scales (1,
0.5, 1.5, 2), upsampled to the image size and summed, normalised per class by their maximum; pixels whose best
present-class CAM is above 0.30 take that class, pixels where every CAM is below 0.05 are background, the rest
is 255 (ignored). The PNGs are written as ``<image id>.png`` and read back by :class:`PseudoLabeledImages`,
which gives CCT's unlabeled stream the same random crop/flip on image and pseudo-label.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from fewlabels.data.base import DataError, FewDataset
from fewlabels.methods.cct.config import CCTConfig
from fewlabels.models import IMAGENET_MEAN, IMAGENET_STD, build_encoder
from fewlabels.progress import track

__all__ = [
    "CAMClassifier",
    "CAMPseudoLabels",
    "CAMSettings",
    "PseudoLabeledImages",
    "cams_to_pseudo_label",
    "image_labels_from_mask",
    "multiscale_cams",
    "pseudo_labels_from_image_labels",
    "read_image_labels",
    "sample_id",
    "cam_classifier",
    "train_cam_classifier",
    "write_pseudo_labels",
]


def sample_id(sample: dict[str, Any]) -> str:
    """File stem of a sample's pseudo-label: its ``id`` (readers) or zero-padded ``index`` (generators)."""
    return str(sample["id"]) if "id" in sample else f"{int(sample['index']):06d}"


class CAMClassifier(nn.Module):
    """Multi-label classifier whose linear layer on pooled features gives class activation maps.

    ``logits = W . mean_{h,w} f(x)``; ``cam_c(x) = relu(W_c . f(x))`` ``[B, C, h, w]``. Images in ``[0, 1]``.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        encoder: str,
        num_classes: int,
        output_stride: int = 16,
        pretrained: str | None = None,
        deep_stem: bool = False,
    ):
        super().__init__()
        self.encoder = build_encoder(encoder, output_stride, deep_stem=deep_stem, pretrained=pretrained)
        self.classifier = nn.Conv2d(self.encoder.out_channels, num_classes, kernel_size=1, bias=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def features(self, x: Tensor) -> Tensor:
        return self.encoder((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> multi-label logits ``[B, C]``."""
        return self.classifier(self.features(x).mean(dim=(2, 3), keepdim=True)).flatten(1)

    def cam(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``relu(W . f(x))`` ``[B, C, h, w]``."""
        return F.relu(self.classifier(self.features(x)))


def image_labels_from_mask(mask: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Multi-hot ``[C]`` float vector of the classes present in ``mask [H, W]`` (ignore index skipped)."""
    present = mask[mask != ignore_index].long().unique()
    labels = torch.zeros(num_classes)
    labels[present[present < num_classes]] = 1.0
    return labels


@torch.no_grad()
def multiscale_cams(model: CAMClassifier, image: Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0)) -> Tensor:
    """Per-class normalised CAMs of one image: ``sum_s up(cam(resize(x, s)))`` divided by its per-class
    maximum.

    Shapes: ``image [3, H, W]`` -> ``[C, H, W]`` in ``[0, 1]``.
    """
    h, w = image.shape[-2:]
    total = None
    for s in scales:
        x = (
            image[None]
            if s == 1.0
            else F.interpolate(image[None], scale_factor=s, mode="bilinear", align_corners=False)
        )
        cam = F.interpolate(model.cam(x), size=(h, w), mode="bilinear", align_corners=False)[0]
        total = cam if total is None else total + cam
    assert total is not None
    return total / (total.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-5)


def cams_to_pseudo_label(
    cams: Tensor,
    present: Tensor,
    background_index: int = 0,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    ignore_index: int = 255,
) -> Tensor:
    """Threshold normalised CAMs into a pseudo-label map.

    Only the classes present in the image (``present [C]`` multi-hot, background excluded) compete: where the
    best of their CAMs exceeds ``fg_threshold`` the pixel takes that class; where all are below ``bg_threshold`` it is
    ``background_index``; elsewhere ``ignore_index``. ``cams [C, H, W]`` -> ``[H, W]`` int64.
    """
    keep = present.bool().clone()
    keep[background_index] = False
    scores = cams * keep.view(-1, 1, 1).to(cams.dtype)
    best, cls = scores.max(dim=0)
    label = torch.full(best.shape, ignore_index, dtype=torch.long)
    label[best > fg_threshold] = cls[best > fg_threshold]
    label[best < bg_threshold] = background_index
    return label


def train_cam_classifier(
    model: CAMClassifier,
    dataset: FewDataset,
    image_labels: Sequence[Tensor],
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Multi-label BCE training on augmented samples of ``dataset`` (``image_labels[i]`` for sample ``i``).

    Returns the loss of every step.
    """
    if len(image_labels) != len(dataset):
        raise DataError(f"{len(image_labels)} image-level labels for {len(dataset)} images")
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in track(range(steps), steps, "CAM classifier", "steps"):
        idx = rng.choice(len(dataset), size=min(batch_size, len(dataset)), replace=False)
        items = [dataset.sample(int(i), rng) for i in idx]
        x = torch.stack([it["image"] for it in items]).to(device)
        y = torch.stack([image_labels[int(i)] for i in idx]).to(device)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def write_pseudo_labels(
    model: CAMClassifier,
    dataset: FewDataset,
    image_labels: Sequence[Tensor],
    out_dir: str | Path,
    background_index: int = 0,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    device: torch.device | str = "cpu",
) -> list[Path]:
    """Write ``<id>.png`` (uint8 class indices, 255 ignored) for every image of ``dataset`` (unaugmented)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to(device).eval()
    written = []
    for i in track(range(len(dataset)), len(dataset), "pseudo-labels", "images"):
        item = dataset[i]
        cams = multiscale_cams(model, item["image"].to(device), scales).cpu()
        label = cams_to_pseudo_label(cams, image_labels[i], background_index, fg_threshold, bg_threshold)
        path = out / f"{sample_id(item)}.png"
        Image.fromarray(label.numpy().astype(np.uint8)).save(path)
        written.append(path)
    return written


class PseudoLabeledImages(FewDataset):
    """Unlabeled images paired with their pseudo-label PNGs, augmented together.

    Wraps the unlabeled dataset of a run (whose ``transform`` is the joint augmentation) and adds ``"mask"``
    read from ``labels_dir/<id>.png``; a missing file is a :class:`DataError` naming it and the command that
    writes it.
    """

    def __init__(self, images: FewDataset, labels_dir: str | Path) -> None:
        self.images = images
        self.labels_dir = Path(labels_dir)
        if not self.labels_dir.is_dir():
            raise DataError(
                f"weak-label folder not found: {self.labels_dir} (write it with `fewlabels cct-pseudo-labels`)"
            )
        self.transform = getattr(images, "transform", None)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        item = dict(self.images.sample(index, None))
        path = self.labels_dir / f"{sample_id(item)}.png"
        if not path.is_file():
            raise DataError(f"pseudo-label missing: {path} (run `fewlabels cct-pseudo-labels` for this dataset)")
        mask = np.asarray(Image.open(path))
        image = (item["image"].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        if mask.shape != image.shape[:2]:
            raise DataError(f"pseudo-label {path} is {mask.shape}, its image is {image.shape[:2]}")
        if self.transform is not None and rng is not None:
            image, mask = self.transform(image, mask, rng)
        item["image"] = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
        item["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
        return item


def read_image_labels(path: str | Path, ids: Sequence[str], num_classes: int) -> list[Tensor]:
    """Multi-hot ``[C]`` vectors from a JSON file ``{"<image id>": [class, ...]}``, in ``ids`` order."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image-level label file not found: {p} (JSON mapping image id -> list of class indices)")
    table = json.loads(p.read_text())
    missing = [i for i in ids if i not in table]
    if missing:
        raise DataError(f"{p} has no labels for {len(missing)} images, e.g. {missing[:3]}")
    out = []
    for i in ids:
        classes = [int(c) for c in table[i]]
        if any(not 0 <= c < num_classes for c in classes):
            raise DataError(f"{p}: image {i!r} has classes {classes} outside 0..{num_classes - 1}")
        vec = torch.zeros(num_classes)
        vec[classes] = 1.0
        out.append(vec)
    return out


@dataclass
class CAMSettings:
    """How the CAM classifier is trained and how its maps are thresholded (the ``cct-pseudo-labels`` flags)."""

    #: the classifier's encoder; "" = the config's ``model.encoder``, with its ``deep_stem`` and ``pretrained``
    encoder: str = ""
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05


@dataclass
class CAMPseudoLabels:
    """What :func:`pseudo_labels_from_image_labels` did: the classifier's loss at every step and the files written."""

    losses: list[float]
    written: list[Path]


def cam_classifier(config: CCTConfig, settings: CAMSettings, num_classes: int) -> CAMClassifier:
    """The CAM classifier of ``settings`` for a CCT config: by default (``settings.encoder`` empty or the config's
    encoder) the config's ``model.encoder`` with its ``model.deep_stem`` stem and ``model.pretrained`` weights, so
    that the deep-stem ResNet-50 weights of the VOC configs load into a deep-stem network. Another encoder starts
    from scratch: the config's weights belong to the config's encoder (a warning says so)."""
    model_cfg = config.model
    name = settings.encoder or model_cfg.encoder
    if name == model_cfg.encoder:
        return CAMClassifier(name, num_classes, pretrained=model_cfg.pretrained, deep_stem=model_cfg.deep_stem)
    if model_cfg.pretrained:
        warnings.warn(
            f"the CAM classifier's encoder {name!r} is not the config's {model_cfg.encoder!r}: model.pretrained "
            f"({model_cfg.pretrained}) is not loaded into it; it starts from scratch",
            stacklevel=2,
        )
    return CAMClassifier(name, num_classes)


def pseudo_labels_from_image_labels(
    config: CCTConfig, image_labels: str | Path, out_dir: str | Path, settings: CAMSettings | None = None
) -> CAMPseudoLabels:
    """Pixel pseudo-labels of the unlabeled images of a CCT config, from their image-level labels.

    Trains a :class:`CAMClassifier` on those images (multi-label targets read by :func:`read_image_labels` from
    ``image_labels``, seeded by ``config.seed``) and writes ``out_dir/<image id>.png`` for each. The background
    class is the first of ``perturbations.background_classes``, else the first class the dataset does not list
    as a thing class (0 when every class is one).
    """
    from fewlabels.methods.segmentation.method import build_segmentation_data

    cam = settings if settings is not None else CAMSettings()
    data = build_segmentation_data(config.data)
    nc = data.num_classes
    chosen = config.perturbations.background_classes
    things = set(data.thing_classes)
    background = (list(chosen) if chosen else [c for c in range(nc) if c not in things] or [0])[0]
    images = data.unlabeled
    ids = [sample_id(images.sample(i, None)) for i in range(len(images))]
    labels = read_image_labels(image_labels, ids, nc)
    model = cam_classifier(config, cam, nc)
    losses = train_cam_classifier(model, images, labels, cam.steps, cam.batch_size, cam.lr, config.seed)
    written = write_pseudo_labels(
        model, images, labels, out_dir, background, cam.scales, cam.fg_threshold, cam.bg_threshold
    )
    return CAMPseudoLabels(losses, written)
