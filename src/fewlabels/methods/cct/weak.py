"""Weak labels for CCT: class activation maps (CAM) from image-level labels turned into pixel pseudo-labels.

Pipeline (thesis chapter 1, "weak labels"; the reference's ``pseudo_labels/``): a classifier (encoder + global
average pooling + linear layer) is trained with multi-label targets on random crops (:class:`CAMImages`) — that
training is the ``cct-cam`` method (:mod:`fewlabels.methods.cct.cam`), run by the training engine; for every image
its CAMs ``relu(w_c . f(x))`` are computed at scales (1, 0.5, 1.5, 2), each with its horizontal flip, upsampled to
the image size and summed, normalised per class by their maximum; pixels whose best present-class CAM is above 0.30
take that class, pixels where every CAM is below 0.05 are background, the rest is 255 (ignored). As in the reference,
both thresholded maps can be refined by a dense CRF (:mod:`fewlabels.methods.cct.crf`) before they are combined.
The PNGs are written as ``<image id>.png`` by :func:`write_pseudo_labels` and read back by
:class:`PseudoLabeledImages`, which gives CCT's unlabeled stream the same random crop/flip on image and pseudo-label.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from fewlabels.data.base import DataError, FewDataset, Subset
from fewlabels.data.scenes import ScenesDataset
from fewlabels.data.segmentation import SegmentationDataset
from fewlabels.methods.cct.crf import CRFSettings, crf_refine_labels
from fewlabels.models import IMAGENET_MEAN, IMAGENET_STD, build_encoder
from fewlabels.progress import track

__all__ = [
    "CAMClassifier",
    "CAMImages",
    "PseudoLabeledImages",
    "background_class",
    "cams_to_pseudo_label",
    "image_id_and_side",
    "image_labels_from_mask",
    "multiscale_cams",
    "read_image_labels",
    "sample_id",
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
def multiscale_cams(
    model: CAMClassifier, image: Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = False
) -> Tensor:
    """Per-class normalised CAMs of one image: ``sum_s up(cam(resize(x, s)))`` divided by its per-class
    maximum; with ``flip`` each scale adds the CAM of the flipped image, flipped back (the reference's
    ``x[0] + x[1].flip(-1)``).

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
        if flip:
            both = model.cam(torch.cat([x, x.flip(-1)]))
            maps = both[:1] + both[1:].flip(-1)
        else:
            maps = model.cam(x)
        cam = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)[0]
        total = cam if total is None else total + cam
    assert total is not None
    return total / (total.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-5)


#: refines label maps ``[B, H, W]`` of one image (values ``0..n-1``) with ``n`` labels, each map on its own, e.g. a
#: dense CRF on the image (the maps share its kernels)
Refine = Callable[[Tensor, int], Tensor]


def cams_to_pseudo_label(
    cams: Tensor,
    present: Tensor,
    background_index: int = 0,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    ignore_index: int = 255,
    refine: Refine | None = None,
) -> Tensor:
    """Threshold normalised CAMs into a pseudo-label map, the reference's way.

    Only the classes present in the image (``present [C]`` multi-hot, background excluded) compete. Two label maps
    over ``[background, present classes...]`` are the argmax of the present CAMs with a constant background score,
    once ``fg_threshold`` and once ``bg_threshold`` (a tie goes to the background). ``refine`` (e.g. a dense CRF)
    gets both maps at once, stacked ``[2, H, W]``, and may change them. A pixel takes the class of the first map
    when it is not background there; it is ``background_index`` where both maps say background; elsewhere
    ``ignore_index``. Without ``refine``: the best
    present CAM above ``fg_threshold`` gives its class, all at most ``bg_threshold`` give background.
    ``cams [C, H, W]`` -> ``[H, W]`` int64.
    """
    keep = present.bool().clone()
    keep[background_index] = False
    classes = keep.nonzero().flatten().to(cams.device)
    keys = torch.cat([torch.tensor([background_index], device=cams.device), classes])
    sub = cams[classes]

    def level(threshold: float) -> Tensor:
        pad = torch.full((1, *cams.shape[1:]), threshold, dtype=cams.dtype, device=cams.device)
        return torch.cat([pad, sub]).argmax(dim=0)

    both = torch.stack([level(fg_threshold), level(bg_threshold)])
    fg, bg = refine(both, len(keys)) if refine is not None else both
    label = keys[fg].long()
    label[fg == 0] = ignore_index
    label[(fg == 0) & (bg == 0)] = background_index
    return label.cpu()


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
    flip: bool = False,
    crf: CRFSettings | None = None,
) -> list[Path]:
    """Write ``<id>.png`` (uint8 class indices, 255 ignored) for every image of ``dataset`` (unaugmented): the
    thresholded multi-scale CAMs (:func:`multiscale_cams`, :func:`cams_to_pseudo_label`), both maps refined by a
    dense CRF on the image when ``crf`` is given and enabled."""
    if len(image_labels) != len(dataset):
        raise DataError(f"{len(image_labels)} image-level labels for {len(dataset)} images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to(device).eval()
    written = []
    for i in track(range(len(dataset)), len(dataset), "pseudo-labels", "images"):
        item = dataset[i]
        image = item["image"].to(device)
        cams = multiscale_cams(model, image, scales, flip)
        refine = _crf_refiner(image, crf) if crf is not None and crf.enabled else None
        label = cams_to_pseudo_label(
            cams, image_labels[i].to(device), background_index, fg_threshold, bg_threshold, refine=refine
        )
        path = out / f"{sample_id(item)}.png"
        Image.fromarray(label.numpy().astype(np.uint8)).save(path)
        written.append(path)
    return written


def _crf_refiner(image: Tensor, settings: CRFSettings) -> Refine:
    def refine(labels: Tensor, n: int) -> Tensor:
        return crf_refine_labels(image, labels, n, settings)

    return refine


def background_class(chosen: Sequence[int], num_classes: int, thing_classes: Sequence[int]) -> int:
    """The class of pixels no present class claims: the first of ``chosen`` (CCT's
    ``perturbations.background_classes``), else the first class that is not a thing class, else 0."""
    if chosen:
        return int(chosen[0])
    things = set(thing_classes)
    return next((c for c in range(num_classes) if c not in things), 0)


def image_id_and_side(dataset: FewDataset, index: int) -> tuple[str, int]:
    """The pseudo-label file stem of image ``index`` (:func:`sample_id`) and its longest side, read without
    decoding the image where the dataset allows (files: the image header; generated scenes: the array)."""
    base, j = dataset, index
    while isinstance(base, Subset):
        j = base.indices[j]
        base = base.dataset
    if isinstance(base, SegmentationDataset):
        with Image.open(base.image_paths[j]) as im:
            return base.ids[j], max(im.size)
    if isinstance(base, ScenesDataset):
        scene = int(base.indices[j])
        return f"{scene:06d}", max(base.images[scene].shape[:2])
    item = dataset.sample(index, None)
    return sample_id(item), max(item["image"].shape[-2:])


class CAMImages(FewDataset):
    """Training examples of the CAM classifier: an image with its multi-hot label vector, randomly cropped.

    As the reference's ``random_crop``: a ``crop x crop`` window at a uniformly drawn place; an image smaller than
    the crop (in a side) is placed at a uniformly drawn offset inside it, the rest filled with the ImageNet mean
    colour (zero after the classifier's normalisation, as the reference pads its normalised images with 0); then a
    horizontal flip with probability 1/2 (``hflip``). Without ``rng`` (evaluation): centred, not flipped.
    ``sample`` returns ``{"image": [3, crop, crop], "labels": [C], "index": int}``.
    """

    def __init__(self, images: FewDataset, labels: Sequence[Tensor], crop: int, hflip: bool = True) -> None:
        if len(labels) != len(images):
            raise DataError(f"{len(labels)} image-level labels for {len(images)} images")
        self.images = images
        self.labels = list(labels)
        self.crop = int(crop)
        self.hflip = bool(hflip)
        self.fill = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        image = self.images.sample(index, None)["image"]
        # Every draw up front, in a fixed order: the stream consumed does not depend on the image.
        u_top, u_left, u_flip = (rng.random(), rng.random(), rng.random()) if rng is not None else (0.5, 0.5, 1.0)
        c = self.crop
        h, w = image.shape[-2:]
        out = self.fill.expand(3, c, c).clone()
        (src_y, dst_y), (src_x, dst_x) = _offsets(h, c, u_top), _offsets(w, c, u_left)
        ch, cw = min(c, h), min(c, w)
        out[:, dst_y : dst_y + ch, dst_x : dst_x + cw] = image[:, src_y : src_y + ch, src_x : src_x + cw]
        if self.hflip and u_flip < 0.5:
            out = out.flip(-1)
        return {"image": out, "labels": self.labels[index].clone(), "index": index}


def _offsets(size: int, crop: int, u: float) -> tuple[int, int]:
    """(offset in the image, offset in the crop) of a random crop along one side, ``u`` uniform in [0, 1)."""
    if size > crop:
        return int(u * (size - crop + 1)), 0
    return 0, int(u * (crop - size + 1))


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
        mask = np.array(Image.open(path))  # a writable copy: torch shares it
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
    try:
        table = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p} is not a JSON file ({e}); expected {{image id: [class, ...]}}") from None
    if not isinstance(table, dict):
        raise DataError(f"{p} holds a JSON {type(table).__name__}; expected a mapping {{image id: [class, ...]}}")
    missing = [i for i in ids if i not in table]
    if missing:
        raise DataError(f"{p} has no labels for {len(missing)} images, e.g. {missing[:3]}")
    out = []
    for i in ids:
        entry = table[i]
        if not isinstance(entry, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in entry):
            raise DataError(f"{p}: image {i!r} has {entry!r}; expected a list of class indices")
        classes = [int(c) for c in entry]
        if any(not 0 <= c < num_classes for c in classes):
            raise DataError(f"{p}: image {i!r} has classes {classes} outside 0..{num_classes - 1}")
        vec = torch.zeros(num_classes)
        vec[classes] = 1.0
        out.append(vec)
    return out
