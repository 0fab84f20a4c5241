"""Segmentation plumbing shared by the supervised baseline and CCT: datasets, model, evaluation, prediction.

Both methods read the same datasets with the same labeled/unlabeled split and augmentation, build the same
encoder/decoder and are evaluated by the same code, so that a CCT-vs-baseline difference comes from the method only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fewlabels.data.base import DataError, FewDataset, Subset
from fewlabels.data.splits import labeled_unlabeled_split, read_id_list
from fewlabels.data.transforms import SegAugment
from fewlabels.methods.supervised.config import SegDataConfig, SegEvalConfig, SegModelConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class SegData:
    """Training and validation datasets of one segmentation run."""

    labeled: FewDataset
    unlabeled: FewDataset
    val: FewDataset
    num_classes: int
    class_names: list[str]
    ignore_index: int
    thing_classes: list[int]


def _split_indices(n: int, cfg: SegDataConfig) -> tuple[list[int], list[int]]:
    amount: int | float = int(cfg.labeled) if cfg.labeled >= 1 else cfg.labeled
    return labeled_unlabeled_split(n, amount, cfg.split_seed)


def build_segmentation_data(cfg: SegDataConfig) -> SegData:
    """Labeled / unlabeled / validation datasets for ``cfg`` (augmentation on the training ones)."""
    full: Any
    images: Any
    val: Any
    aug = SegAugment(cfg.crop_size, (cfg.scale[0], cfg.scale[1]), cfg.hflip)
    if cfg.dataset == "scenes":
        from fewlabels.data.scenes import ScenesDataset

        full = ScenesDataset("train", n=cfg.scenes_train, size=cfg.scenes_size, transform=aug)
        images = ScenesDataset("train", n=cfg.scenes_train, size=cfg.scenes_size, labeled=False, transform=aug)
        val = ScenesDataset("val", n=cfg.scenes_val, size=cfg.scenes_size)
        lab, unl = _split_indices(len(full), cfg)
        return SegData(
            Subset(full, lab),
            Subset(images, unl),
            val,
            full.num_classes,
            list(full.class_names),
            full.ignore_index,
            list(full.thing_classes),
        )
    if cfg.dataset == "voc":
        from fewlabels.data.segmentation import VOCSegmentation

        val = VOCSegmentation(cfg.root, split=cfg.val_split)
        if cfg.labeled_list:
            labeled = VOCSegmentation(cfg.root, split=cfg.train_split, ids=cfg.labeled_list, transform=aug)
            unl_ids = read_id_list(cfg.unlabeled_list) if cfg.unlabeled_list else None
            if unl_ids is None:
                pool = VOCSegmentation(cfg.root, split=cfg.train_split, labeled=False)
                taken = set(labeled.ids)
                unl_ids = [i for i in pool.ids if i not in taken]
            unlabeled = VOCSegmentation(cfg.root, split=cfg.train_split, ids=unl_ids, labeled=False, transform=aug)
            return SegData(labeled, unlabeled, val, 21, list(val.class_names), 255, list(range(1, 21)))
        full = VOCSegmentation(cfg.root, split=cfg.train_split, transform=aug)
        images = VOCSegmentation(cfg.root, split=cfg.train_split, labeled=False, transform=aug)
        lab, unl = _split_indices(len(full), cfg)
        return SegData(Subset(full, lab), Subset(images, unl), val, 21, list(val.class_names), 255, list(range(1, 21)))
    if cfg.dataset == "cityscapes":
        from fewlabels.data.segmentation import CityscapesSegmentation

        full = CityscapesSegmentation(cfg.root, cfg.train_split, transform=aug)
        images = CityscapesSegmentation(cfg.root, cfg.train_split, labeled=False, transform=aug)
        val = CityscapesSegmentation(cfg.root, cfg.val_split)
        lab, unl = _split_indices(len(full), cfg)
        # Cityscapes "things": person, rider, car, truck, bus, train, motorcycle, bicycle (train ids 11-18).
        return SegData(
            Subset(full, lab),
            Subset(images, unl),
            val,
            full.num_classes,
            list(full.class_names),
            255,
            list(range(11, 19)),
        )
    from fewlabels.data.segmentation import FolderSegmentation

    nc = cfg.num_classes or None
    labeled_ds = FolderSegmentation(cfg.root, labeled=True, transform=aug, num_classes=nc)
    unlabeled_ds = FolderSegmentation(cfg.root, labeled=False, transform=aug, num_classes=labeled_ds.num_classes)
    val_root = Path(cfg.root) / cfg.val_split
    val = (
        FolderSegmentation(val_root, labeled=True, num_classes=labeled_ds.num_classes)
        if (val_root / "images").is_dir()
        else labeled_ds
    )
    num_classes = int(labeled_ds.num_classes or 0)
    return SegData(
        labeled_ds,
        unlabeled_ds,
        val,
        num_classes,
        list(labeled_ds.class_names),
        255,
        list(range(1, num_classes)),
    )


def build_model(cfg: SegModelConfig, num_classes: int):
    from fewlabels.models import build_segmentation_model

    return build_segmentation_model(
        cfg.encoder,
        num_classes,
        output_stride=cfg.output_stride,
        psp=cfg.psp,
        psp_channels=cfg.psp_channels,
        deep_stem=cfg.deep_stem,
        pretrained=cfg.pretrained,
    )


def backbone_param_groups(model: torch.nn.Module, lr_scale: float) -> list[dict]:
    """Encoder parameters at ``lr_scale`` x lr (pretrained backbones learn slower), everything else at lr."""
    encoder = getattr(model, "encoder", None)
    enc_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in enc_ids], "lr_scale": lr_scale},
        {"params": [p for p in params if id(p) not in enc_ids]},
    ]


LogitsFn = Callable[[torch.Tensor], torch.Tensor]
Predictors = Mapping[str, LogitsFn]


def infer_probs(logits_fn: LogitsFn, images: torch.Tensor, cfg: SegEvalConfig) -> torch.Tensor:
    """Class probabilities [B, K, H, W], averaged over ``cfg.scales`` and (optionally) horizontal flips."""
    h, w = images.shape[-2:]
    total = None
    for s in cfg.scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        views = [(x, False), (x.flip(-1), True)] if cfg.flip else [(x, False)]
        for v, flipped in views:
            logits = logits_fn(v)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = logits.float().softmax(1)
            total = p if total is None else total + p
    assert total is not None
    return total / (len(cfg.scales) * (2 if cfg.flip else 1))


def evaluate_segmentation(
    logits_fn: LogitsFn,
    dataset: FewDataset,
    num_classes: int,
    cfg: SegEvalConfig,
    device: torch.device,
    class_names: Sequence[str] = (),
) -> dict[str, float]:
    """mIoU, pixel accuracy and per-class IoU (``iou/<class>``) on ``dataset`` (classes absent from both
    prediction and target in the whole evaluation are excluded from the mean)."""
    from fewlabels.metrics import SegmentationMeter

    meter = SegmentationMeter(num_classes)
    n = len(dataset) if not cfg.max_images else min(cfg.max_images, len(dataset))
    i = 0
    while i < n:
        first = dataset[i]
        items = [first]
        # Batch only images of the same size (VOC images differ in size).
        while len(items) < cfg.batch_size and i + len(items) < n:
            nxt = dataset[i + len(items)]
            if nxt["image"].shape != first["image"].shape:
                break
            items.append(nxt)
        images = torch.stack([it["image"] for it in items]).to(device)
        masks = torch.stack([it["mask"] for it in items]).to(device)
        meter.update(infer_probs(logits_fn, images, cfg).argmax(1), masks)
        i += len(items)
    result = meter.compute()
    out = {"miou": float(result["miou"]), "pixel_accuracy": float(result["pixel_accuracy"])}
    for c, v in enumerate(result["iou"]):
        if not np.isnan(v):
            out[f"iou/{class_names[c] if c < len(class_names) else c}"] = float(v)
    return out


def find_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files among ``inputs`` (folders are searched recursively); none found is an error."""
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input not found: {p}")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))} (looked for {sorted(IMAGE_SUFFIXES)})")
    return files


def predict_masks(
    logits_fn: LogitsFn,
    inputs: Sequence[Path],
    out_dir: Path,
    num_classes: int,
    cfg: SegEvalConfig,
    device: torch.device,
) -> list[Path]:
    """For each image: ``<stem>.png`` (class indices) and ``<stem>_overlay.png`` (colour overlay)."""
    from fewlabels.viz import overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in find_images(inputs):
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"cannot decode image {path}: {e}") from e
        x = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float().div(255).unsqueeze(0).to(device)
        pred = infer_probs(logits_fn, x, cfg).argmax(1)[0].cpu().numpy().astype(np.uint8)
        mask_path = out_dir / f"{path.stem}.png"
        Image.fromarray(pred).save(mask_path)
        overlay_path = out_dir / f"{path.stem}_overlay.png"
        Image.fromarray(overlay(rgb, pred, num_classes)).save(overlay_path)
        written += [mask_path, overlay_path]
    return written


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def segmentation_figure(
    predictors: Predictors,
    dataset: FewDataset,
    num_classes: int,
    out_png: Path,
    device: torch.device,
    count: int = 4,
) -> Path:
    """Grid of image / ground truth / one column per predictor, for the first ``count`` validation images."""
    from fewlabels.viz import colorize, save_image_grid

    rows = []
    for i in range(min(count, len(dataset))):
        item = dataset[i]
        x = item["image"].unsqueeze(0).to(device)
        row = [to_uint8_image(item["image"]), colorize(item["mask"].numpy(), num_classes)]
        for fn in predictors.values():
            row.append(colorize(fn(x).argmax(1)[0].cpu().numpy(), num_classes))
        rows.append(row)
    return save_image_grid(out_png, rows, ["image", "ground truth", *predictors])
