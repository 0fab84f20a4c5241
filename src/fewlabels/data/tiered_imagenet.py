"""``tiered-imagenet``: tiered-ImageNet (351 base, 97 val, 160 novel classes, 84 x 84).

Layout: ``{split}_images.npz`` (key ``images``, ``N x 84 x 84 x 3`` uint8) and ``{split}_labels.pkl`` (a dict whose
fine labels are under ``label_specific``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewlabels.data.base import DataError
from fewlabels.data.common import CheckReport
from fewlabels.data.fewshot import (
    ArrayFewShotDataset,
    FewShotDataset,
    FewShotOptions,
    check_fewshot_splits,
    layout_error,
    normalise_split,
    read_pickle,
)
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

__all__ = ["TIERED_IMAGENET_LAYOUT", "load_tiered_imagenet"]

TIERED_IMAGENET_LAYOUT = (
    "  ROOT/{train,val,test}_images.npz   (key images: N x 84 x 84 x 3 uint8)\n"
    "  ROOT/{train,val,test}_labels.pkl   (key label_specific)"
)


def load_tiered_imagenet(options: FewShotOptions, split: str) -> FewShotDataset:
    """A split from ``{split}_images.npz`` + ``{split}_labels.pkl`` (fine labels ``label_specific``)."""
    root = Path(options.root).expanduser()
    split = normalise_split(split)
    img_path, lab_path = root / f"{split}_images.npz", root / f"{split}_labels.pkl"
    for p in (img_path, lab_path):
        if not p.is_file():
            raise layout_error("tiered-imagenet", f"{p} not found", TIERED_IMAGENET_LAYOUT)
    with np.load(img_path) as npz:
        if "images" not in npz.files:
            raise DataError(f"{img_path}: missing key 'images'; found {npz.files}")
        images = npz["images"]
    meta = read_pickle(lab_path)
    if isinstance(meta, dict):
        meta = {k.decode() if isinstance(k, bytes) else k: v for k, v in meta.items()}
    if not isinstance(meta, dict) or "label_specific" not in meta:
        raise DataError(f"{lab_path}: expected a dict with key 'label_specific'")
    labels = list(np.asarray(meta["label_specific"]).reshape(-1))
    return ArrayFewShotDataset(images, labels, options.image_size or 84, source=str(img_path))


def check_tiered_imagenet(root: Path, report: CheckReport) -> None:
    """Count the images and classes of each split and flag classes too small for 5-shot episodes."""
    check_fewshot_splits(load_tiered_imagenet, root, report)


register_dataset(
    DatasetSpec(
        name="tiered-imagenet",
        description="tiered-ImageNet ({split}_images.npz + {split}_labels.pkl)",
        check=check_tiered_imagenet,
        metadata=DatasetMetadata(ignore_index=None, image_size=84),
        layout=TIERED_IMAGENET_LAYOUT,
        few_shot=load_tiered_imagenet,
    )
)
