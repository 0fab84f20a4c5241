"""``cityscapes``: Cityscapes with fine annotations, 19 train classes (255 = ignore).

Masks are read from ``*_gtFine_labelTrainIds.png`` when that file exists (used as is) and otherwise from
``*_gtFine_labelIds.png`` mapped through :data:`CITYSCAPES_ID_TO_TRAIN_ID` (every other id -> 255). The objects
("things") are person, rider, car, truck, bus, train, motorcycle and bicycle (train ids 11-18).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fewlabels.data.base import DataError, require_path
from fewlabels.data.common import (
    IGNORE_INDEX,
    CheckReport,
    check_sampled_masks,
    missing_files_error,
    read_index_mask,
    report_missing,
)
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.segmentation import (
    SegmentationData,
    SegmentationDataset,
    SegmentationOptions,
    Transform,
    labeled_unlabeled_subsets,
)

__all__ = [
    "CITYSCAPES",
    "CITYSCAPES_CLASS_NAMES",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "CITYSCAPES_LAYOUT",
    "CityscapesSegmentation",
    "cityscapes_label_to_train_ids",
    "find_cityscapes_images",
]

CITYSCAPES_CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# Cityscapes label id -> train id (cityscapesScripts' labels.py): the 19 evaluated classes get 0..18, every other
# label id (void, ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer, license
# plate...) is ignored.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}


def _cityscapes_lookup_table() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


CITYSCAPES_LABEL_TO_TRAIN = _cityscapes_lookup_table()

CITYSCAPES_LAYOUT = """\
  <root>/
    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       34 label ids, mapped to 19 train ids
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  optional, used as is when present"""


def cityscapes_label_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``labelIds`` mask (34 label ids) to the 19 train ids, other ids -> 255 (uint8)."""
    arr = np.asarray(label_ids)
    if arr.dtype != np.uint8:
        arr = np.where((arr >= 0) & (arr < 256), arr, IGNORE_INDEX).astype(np.uint8)
    return CITYSCAPES_LABEL_TO_TRAIN[arr]


def find_cityscapes_images(root: str | Path, split: str) -> list[tuple[str, Path]]:
    """Sorted ``(id, image path)`` pairs of ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``; the id is
    ``<city>/<city>_<seq>_<frame>``."""
    split_dir = require_path(
        Path(root) / "leftImg8bit" / split, f"Cityscapes image folder for split {split!r}", CITYSCAPES_LAYOUT
    )
    found = []
    for city_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for image in sorted(city_dir.glob("*_leftImg8bit.png")):
            prefix = image.name[: -len("_leftImg8bit.png")]
            found.append((f"{city_dir.name}/{prefix}", image))
    return found


class CityscapesSegmentation(SegmentationDataset):
    """Cityscapes with fine annotations, 19 train classes (255 = ignore); ids are ``<city>/<city>_<seq>_<frame>``,
    sorted (see the module docstring for how masks are read)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        labeled: bool = True,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(labeled, transform)
        self.root = require_path(root, "Cityscapes root folder", CITYSCAPES_LAYOUT)
        self.split = split
        self.num_classes = len(CITYSCAPES_CLASS_NAMES)
        self.class_names = list(CITYSCAPES_CLASS_NAMES)
        images = find_cityscapes_images(self.root, split)
        if not images:
            raise DataError(
                f"Cityscapes split {split!r} is empty: no *_leftImg8bit.png under "
                f"{self.root / 'leftImg8bit' / split}"
                f"\nExpected layout:\n{CITYSCAPES_LAYOUT}"
            )
        self.mask_is_train_ids: list[bool] = []
        if labeled:
            require_path(
                self.root / "gtFine" / split,
                f"Cityscapes annotation folder for split {split!r}",
                CITYSCAPES_LAYOUT,
            )
        missing = []
        for ident, image in images:
            self.ids.append(ident)
            self.image_paths.append(str(image))
            if not labeled:
                self.mask_paths.append(None)
                self.mask_is_train_ids.append(False)
                continue
            base = self.root / "gtFine" / split / ident
            train_ids = base.parent / f"{base.name}_gtFine_labelTrainIds.png"
            label_ids = base.parent / f"{base.name}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.mask_paths.append(str(train_ids))
                self.mask_is_train_ids.append(True)
            else:
                self.mask_paths.append(str(label_ids))
                self.mask_is_train_ids.append(False)
                if not label_ids.is_file():
                    missing.append(str(label_ids))
        if missing:
            raise missing_files_error(f"Cityscapes {split} annotations", missing, CITYSCAPES_LAYOUT, len(images))

    def read_mask(self, index: int) -> np.ndarray:
        """Train-id mask (0..18, 255 = ignore) of sample ``index``."""
        if self.mask_is_train_ids[index]:
            return super().read_mask(index)
        path = self.mask_paths[index]
        if path is None:
            raise DataError(f"sample {self.ids[index]!r} has no mask (dataset built with labeled=False)")
        return cityscapes_label_to_train_ids(read_index_mask(path))


def build_cityscapes(options: SegmentationOptions, transform: Transform) -> SegmentationData:
    """The labeled and unlabeled halves of the training split (drawn with ``options.labeled``) and the val split."""
    full = CityscapesSegmentation(options.root, options.train_split, transform=transform)
    images = CityscapesSegmentation(options.root, options.train_split, labeled=False, transform=transform)
    val = CityscapesSegmentation(options.root, options.val_split)
    labeled, unlabeled = labeled_unlabeled_subsets(full, images, options)
    return SegmentationData.from_metadata(labeled, unlabeled, val, CITYSCAPES.metadata)


def check_cityscapes(root: Path, report: CheckReport) -> None:
    """Check a Cityscapes folder: images per split, fine annotations for train/val, sampled mask values."""
    image_root = root / "leftImg8bit"
    if not image_root.is_dir():
        report.add_problem(f"image folder not found: {image_root}\nExpected layout:\n{CITYSCAPES_LAYOUT}")
        return
    splits = sorted(p.name for p in image_root.iterdir() if p.is_dir())
    if not splits:
        report.add_problem(f"no split folders (train, val, ...) in {image_root}")
        return
    pairs: list[tuple[Path, Path]] = []
    for split in splits:
        images = find_cityscapes_images(root, split)
        report.counts[f"{split} images"] = len(images)
        if not images:
            report.add_problem(f"no *_leftImg8bit.png images under {image_root / split}")
            continue
        gt_dir = root / "gtFine" / split
        # Only train and val are expected to carry fine annotations (test's are placeholders, train_extra's are
        # coarse).
        if split not in ("train", "val"):
            continue
        if not gt_dir.is_dir():
            report.add_problem(f"annotation folder not found: {gt_dir}\nExpected layout:\n{CITYSCAPES_LAYOUT}")
            continue
        missing = []
        n_labels = 0
        for ident, image in images:
            base = gt_dir / ident
            train_ids = base.parent / f"{base.name}_gtFine_labelTrainIds.png"
            label_ids = base.parent / f"{base.name}_gtFine_labelIds.png"
            # Same rule as the reader: labelTrainIds used as is when present, else labelIds mapped.
            if train_ids.is_file():
                pairs.append((image, train_ids))
                n_labels += 1
            elif label_ids.is_file():
                pairs.append((image, label_ids))
                n_labels += 1
            else:
                missing.append(label_ids)
        report.counts[f"{split} annotations"] = n_labels
        report_missing(report, f"{split} annotations (*_gtFine_labelIds.png)", missing, len(images))
    if pairs:

        def read_train_ids(path: Path) -> Any:
            mask = read_index_mask(path)
            return cityscapes_label_to_train_ids(mask) if path.name.endswith("_labelIds.png") else mask

        check_sampled_masks(report, pairs, len(CITYSCAPES_CLASS_NAMES), read_train_ids)


CITYSCAPES = register_dataset(
    DatasetSpec(
        name="cityscapes",
        description="Cityscapes leftImg8bit + gtFine (labelIds or labelTrainIds)",
        check=check_cityscapes,
        metadata=DatasetMetadata(class_names=CITYSCAPES_CLASS_NAMES, thing_classes=tuple(range(11, 19))),
        layout=CITYSCAPES_LAYOUT,
        segmentation=build_cityscapes,
    )
)
