"""``potsdam3`` and ``potsdam6``: ISPRS Potsdam in IIC's preprocessing (unsupervised segmentation, RGB + infrared).

Layout::

    ROOT/imgs/<id>.mat   (key img, uint8 200x200x4 RGB+IR)
    ROOT/gt/<id>.mat     (key gt, class ids 0..5)
    ROOT/{unlabelled_train,labelled_train,labelled_test}.txt

Potsdam-6 keeps the six classes; Potsdam-3 merges {roads, cars}, {buildings, clutter}, {vegetation, trees}. IIC ships
no ground truth for ``unlabelled_train``: its masks are all 255. The two variants are two datasets of this module.

Splits (IIC's "IID" protocol, the one AC follows): by default the training images are the three lists
(``unlabelled_train``, ``labelled_train``, ``labelled_test``) and the images that match clusters to classes and are
tested are ``labelled_train`` + ``labelled_test`` (IIC: ``mapping_assignment_partitions = mapping_test_partitions =
["labelled_train", "labelled_test"]``). ``split`` / ``eval_split`` name other comma-separated lists. Tiles are
200 x 200 and IIC's input size is 200: evaluation sees whole tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fewlabels.data.base import DataError, FewDataset, require_path
from fewlabels.data.common import IGNORE_INDEX, MASK_SAMPLES, CheckReport
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.unsupervised import (
    UnsupervisedData,
    UnsupervisedOptions,
    check_values,
    crop,
    read_list,
    read_mat,
    sample_dict,
)

__all__ = ["POTSDAM_CLASSES", "POTSDAM_LAYOUT", "PotsdamDataset", "check_potsdam", "potsdam_class_names"]

#: Potsdam fine classes (gt values 0..5) and the Potsdam-3 merge.
POTSDAM_CLASSES: tuple[str, ...] = ("roads", "buildings", "vegetation", "trees", "cars", "clutter")
_POTSDAM3 = (0, 1, 2, 2, 0, 1)
_POTSDAM3_NAMES = ("roads and cars", "buildings and clutter", "vegetation and trees")
_POTSDAM_TRAIN_LISTS = ("unlabelled_train", "labelled_train", "labelled_test")
_POTSDAM_EVAL_LISTS = ("labelled_train", "labelled_test")  # IIC "IID": match and test on the labelled tiles

POTSDAM_LAYOUT = """  ROOT/imgs/<id>.mat   (key 'img', uint8 200x200x4 RGB+IR)
  ROOT/gt/<id>.mat     (key 'gt', class ids 0..5)
  ROOT/unlabelled_train.txt, ROOT/labelled_train.txt, ROOT/labelled_test.txt"""


def potsdam_class_names(variant: int) -> tuple[str, ...]:
    """The class names of Potsdam-``variant`` (3 or 6), in label order."""
    return _POTSDAM3_NAMES if variant == 3 else POTSDAM_CLASSES


class PotsdamDataset(FewDataset):
    """Potsdam-3 / -6 in IIC's preprocessing (layout in the module docstring).

    Args:
        root: dataset folder. lists: split list names (default: all three, IIC's training images).
        variant: 3 or 6. input_size: crop side (IIC: 200, the whole tile).
    """

    def __init__(
        self,
        root: str | Path,
        lists: Sequence[str] = _POTSDAM_TRAIN_LISTS,
        variant: int = 3,
        input_size: int = 200,
    ) -> None:
        if variant not in (3, 6):
            raise DataError(f"Potsdam variant must be 3 or 6, got {variant}")
        self.root = require_path(root, "Potsdam folder", POTSDAM_LAYOUT)
        self.ids: list[str] = []
        self.labelled: list[bool] = []  # IIC ships no ground truth for unlabelled_train: its masks are all 255
        for name in lists:
            ids = read_list(self.root / f"{name}.txt", "Potsdam split list", POTSDAM_LAYOUT)
            self.ids += ids
            self.labelled += [name != "unlabelled_train"] * len(ids)
        self.variant, self.input_size = variant, int(input_size)
        self.num_classes = variant
        self.class_names = list(potsdam_class_names(variant))
        self.in_channels = 4
        self.ignore_index = IGNORE_INDEX
        self.table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        self.table[:6] = _POTSDAM3 if variant == 3 else range(6)

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        image_id = self.ids[index]
        img_path, gt_path = self.root / "imgs" / f"{image_id}.mat", self.root / "gt" / f"{image_id}.mat"
        image = read_mat(img_path, "img")
        if image.ndim != 3 or image.shape[2] != 4 or image.dtype != np.uint8:
            raise DataError(f"{img_path}: 'img' must be uint8 HxWx4 (RGB+IR), got {image.dtype} {image.shape}")
        if not self.labelled[index] and not gt_path.is_file():
            gt = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        else:
            gt = read_mat(gt_path, "gt")
        if gt.shape != image.shape[:2]:
            raise DataError(f"{gt_path}: 'gt' is {gt.shape}, its image is {image.shape[:2]}")
        check_values(gt, 6, gt_path)
        labels: np.ndarray | None = self.table[gt.astype(np.int64)]
        image, labels = crop(image, labels, self.input_size, rng)
        return sample_dict(image, labels, index)


def _builder(variant: int) -> Callable[[UnsupervisedOptions], UnsupervisedData]:
    def build(options: UnsupervisedOptions) -> UnsupervisedData:
        """The tiles of the comma-separated list names of ``split`` (default all three), evaluated on those of
        ``eval_split`` (default: labelled_train + labelled_test when training on the default lists, IIC's "IID"
        protocol; else the training tiles)."""
        lists = tuple(s for s in options.split.split(",") if s) or _POTSDAM_TRAIN_LISTS
        pots = PotsdamDataset(options.root, lists, variant, options.input_size)
        eval_lists = tuple(s for s in options.eval_split.split(",") if s)
        if not eval_lists and lists == _POTSDAM_TRAIN_LISTS:
            eval_lists = _POTSDAM_EVAL_LISTS
        ev = PotsdamDataset(options.root, eval_lists, variant, options.input_size) if eval_lists else pots
        return UnsupervisedData(pots, ev, variant, pots.class_names, 4)

    build.__qualname__ = f"build_potsdam{variant}"
    return build


def check_potsdam(root: Path, report: CheckReport) -> None:
    """Check the three split lists, the tiles they name and a few ground-truth files (shared by both variants)."""
    for name in _POTSDAM_TRAIN_LISTS:
        path = root / f"{name}.txt"
        if not path.is_file():
            report.add_problem(f"missing split list: {path}\nExpected layout:\n{POTSDAM_LAYOUT}")
            continue
        ids = read_list(path, "Potsdam split list", POTSDAM_LAYOUT)
        report.counts[f"{name} images"] = len(ids)
        missing = [str(root / "imgs" / f"{i}.mat") for i in ids if not (root / "imgs" / f"{i}.mat").is_file()]
        if name != "unlabelled_train":
            missing += [str(root / "gt" / f"{i}.mat") for i in ids if not (root / "gt" / f"{i}.mat").is_file()]
        if missing:
            report.add_problem(f"{len(missing)} files of {path.name} are missing, e.g. {missing[:5]}")
        if name != "unlabelled_train":
            for i in ids[:MASK_SAMPLES]:
                gt_path = root / "gt" / f"{i}.mat"
                if gt_path.is_file():
                    check_values(read_mat(gt_path, "gt"), 6, gt_path)


for _variant in (3, 6):
    register_dataset(
        DatasetSpec(
            name=f"potsdam{_variant}",
            description=f"ISPRS Potsdam in IIC's .mat preprocessing, Potsdam-{_variant} classes (RGB + IR)",
            check=check_potsdam,
            metadata=DatasetMetadata(class_names=potsdam_class_names(_variant), thing_classes=(), in_channels=4),
            layout=POTSDAM_LAYOUT,
            unsupervised=_builder(_variant),
        )
    )
