"""``image-folder``: a user's own images for unsupervised segmentation, masks optional (used only to evaluate).

Layout::

    ROOT/images/<name>.<jpg|png|...>
    ROOT/masks/<name>.png   (optional: a mask for every image, class indices, 255 = ignore)
    ROOT/classes.txt        (optional, one class name per line)

``data.eval_split`` names a sub-folder of ROOT in the same layout for evaluation (else the training images). Its old
name in AC configs, ``folder``, is still accepted there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fewlabels.data.base import DataError, FewDataset, require_path
from fewlabels.data.common import (
    IGNORE_INDEX,
    CheckReport,
    check_classes_file,
    check_image_dir,
    check_images_decode,
    check_sampled_masks,
    list_images,
    read_class_names,
    read_index_mask,
    read_rgb,
    report_missing,
)
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.unsupervised import UnsupervisedData, UnsupervisedOptions, check_values, crop, rescale, sample_dict

__all__ = ["IMAGE_FOLDER_LAYOUT", "ImageFolderDataset"]

IMAGE_FOLDER_LAYOUT = """  ROOT/images/<name>.<jpg|png|...>
  ROOT/masks/<name>.png   (optional, class indices, 255 = ignore; used for evaluation only)
  ROOT/classes.txt        (optional, one class name per line)"""


class ImageFolderDataset(FewDataset):
    """Images of ``ROOT/images`` (+ optional ``ROOT/masks/<stem>.png`` for evaluation), rescaled and cropped."""

    def __init__(self, root: str | Path, input_size: int = 128, scale: float = 1.0) -> None:
        self.root = require_path(root, "image folder", IMAGE_FOLDER_LAYOUT)
        images = list_images(require_path(self.root / "images", "images folder", IMAGE_FOLDER_LAYOUT))
        if not images:
            raise DataError(f"no images in {self.root / 'images'}\nExpected layout:\n{IMAGE_FOLDER_LAYOUT}")
        self.ids = sorted(images)
        self.paths = [images[i] for i in self.ids]
        mask_dir = self.root / "masks"
        self.mask_paths = [mask_dir / f"{i}.png" for i in self.ids] if mask_dir.is_dir() else None
        if self.mask_paths is not None:
            missing = [str(p) for p in self.mask_paths if not p.is_file()]
            if missing:
                raise DataError(
                    f"{len(missing)} images have no mask, e.g. {missing[:3]}; give every image a "
                    f"mask or remove the masks folder\nExpected layout:\n{IMAGE_FOLDER_LAYOUT}"
                )
        classes = self.root / "classes.txt"
        self.class_names = read_class_names(classes) if classes.is_file() else []
        self.num_classes = len(self.class_names)
        self.input_size, self.scale = int(input_size), float(scale)
        self.in_channels = 3
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        image = read_rgb(self.paths[index])
        mask: np.ndarray | None = None
        if self.mask_paths is not None:
            mask = read_index_mask(self.mask_paths[index])
            if mask.shape != image.shape[:2]:
                raise DataError(f"{self.mask_paths[index]} is {mask.shape}, its image is {image.shape[:2]}")
            if self.num_classes:
                check_values(mask, self.num_classes, self.mask_paths[index])
            mask = mask.astype(np.uint8)
        image, mask = rescale(image, mask, self.scale)
        image, mask = crop(image, mask, self.input_size, rng)
        return sample_dict(image, mask, index)


def build_image_folder(options: UnsupervisedOptions) -> UnsupervisedData:
    """The images of ROOT, evaluated on the sub-folder ``eval_split`` or on themselves; classes from classes.txt."""
    folder = ImageFolderDataset(options.root, options.input_size, options.scale)
    if options.eval_split:
        ev: FewDataset = ImageFolderDataset(Path(options.root) / options.eval_split, options.input_size, options.scale)
    else:
        ev = folder
    names = folder.class_names or [str(i) for i in range(folder.num_classes)]
    return UnsupervisedData(folder, ev, folder.num_classes, names, IMAGE_FOLDER.metadata.in_channels)


def check_image_folder(root: Path, report: CheckReport) -> None:
    """Check ``images/``, and when there are masks that every image has one and a few of them hold valid values."""
    images = check_image_dir(report, root / "images", IMAGE_FOLDER_LAYOUT)
    if not images:
        return
    check_images_decode(report, list(images.values()))  # every image in full: a bad file is named now
    num_classes = check_classes_file(report, root)
    mask_dir = root / "masks"
    if not mask_dir.is_dir():
        return  # masks are optional: without them the clusters cannot be evaluated, only trained
    masks = {stem: mask_dir / f"{stem}.png" for stem in images}
    missing = [p for p in masks.values() if not p.is_file()]
    report.counts["masks"] = len(masks) - len(missing)
    report_missing(
        report, "masks for images/ (with masks/, every image needs masks/<its name>.png)", missing, len(masks)
    )
    present = [(images[s], p) for s, p in sorted(masks.items()) if p.is_file()]
    if present:
        check_sampled_masks(report, present, num_classes)


IMAGE_FOLDER = register_dataset(
    DatasetSpec(
        name="image-folder",
        description="your images for unsupervised segmentation: images/ (+ masks/ to evaluate, classes.txt)",
        check=check_image_folder,
        metadata=DatasetMetadata(),
        layout=IMAGE_FOLDER_LAYOUT,
        unsupervised=build_image_folder,
        aliases=("folder",),
    )
)
