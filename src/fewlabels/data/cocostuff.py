"""``cocostuff3`` and ``cocostuff15``: COCO-Stuff 164k over IIC's curated image lists (unsupervised segmentation).

Layout::

    ROOT/images/{train2017,val2017}/<id>.jpg
    ROOT/annotations/{train2017,val2017}/<id>.png   fine labels 0..181, 255 unlabeled
    ROOT/curated/{train2017,val2017}/<list>.txt     Coco164kFew_Stuff_6 (COCO-Stuff-3),
                                                    Coco164kFull_Stuff_Coarse_7 (COCO-Stuff-15)

Classes (IIC): fine labels map to the 27 coarse categories (12 things then 15 stuff; table below, from the
COCO-Stuff hierarchy as ordered by IIC). COCO-Stuff-15 keeps the 15 stuff categories (coarse 12..26 -> 0..14);
COCO-Stuff-3 keeps sky, plant, ground (-> 0, 1, 2); every other pixel is 255. Images are rescaled by 0.33 before
cropping 128 x 128 (``data.scale``, ``data.input_size``). The two variants are two datasets of this one module.

Splits (IIC's "IID" protocol, the one AC follows): by default the curated lists of ``train2017`` *and* ``val2017``
are the training images, the images whose votes match clusters to classes, and the test images (IIC:
``train_partitions = mapping_assignment_partitions = mapping_test_partitions = ["train2017", "val2017"]``).
``split`` / ``eval_split`` name other comma-separated COCO splits (IIC's "IID+" setting: train on ``train2017``,
test on ``val2017``). Evaluation images are IIC's test crops: rescaled by ``scale``, then the centre
``input_size x input_size`` crop (pixels outside it are not evaluated, as in IIC).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fewlabels.data.base import DataError, FewDataset, require_path
from fewlabels.data.common import IGNORE_INDEX, MASK_SAMPLES, CheckerFunc, CheckReport, read_index_mask, read_rgb
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.unsupervised import (
    UnsupervisedData,
    UnsupervisedOptions,
    check_values,
    crop,
    read_list,
    rescale,
    sample_dict,
)

__all__ = [
    "COARSE_NAMES",
    "COCOSTUFF_IID_SPLITS",
    "COCOSTUFF_LISTS",
    "COCO_LAYOUT",
    "FINE_TO_COARSE",
    "CocoStuffDataset",
    "cocostuff_class_names",
    "cocostuff_label_table",
]

#: COCO-Stuff coarse categories: 12 things (0..11) then 15 stuff (12..26).
COARSE_NAMES: tuple[str, ...] = (
    "electronic-things", "appliance-things", "food-things", "furniture-things", "indoor-things",
    "kitchen-things", "accessory-things", "animal-things", "outdoor-things", "person-things",
    "sports-things", "vehicle-things", "ceiling-stuff", "floor-stuff", "food-stuff", "furniture-stuff",
    "rawmaterial-stuff", "textile-stuff", "wall-stuff", "window-stuff", "building-stuff", "ground-stuff",
    "plant-stuff", "sky-stuff", "solid-stuff", "structural-stuff", "water-stuff",
)  # fmt: skip

#: Coarse category of each COCO-Stuff fine label 0..181 (spec/data/cocostuff_fine_to_coarse.json).
FINE_TO_COARSE: tuple[int, ...] = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6,
    6, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 17, 17, 22, 20, 20,
    22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22, 26, 14, 14,
    15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21, 25, 21, 26,
    21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18,
    18, 18, 18, 26, 26, 19, 19, 24,
)  # fmt: skip

#: IIC curated image lists of each COCO-Stuff variant.
COCOSTUFF_LISTS: dict[int, str] = {3: "Coco164kFew_Stuff_6", 15: "Coco164kFull_Stuff_Coarse_7"}
#: IIC's "IID" protocol: train, match and test on the curated lists of both COCO splits.
COCOSTUFF_IID_SPLITS: tuple[str, ...] = ("train2017", "val2017")
_COCO3_COARSE = (23, 22, 21)  # sky, plant, ground -> 0, 1, 2 (IIC order)

COCO_LAYOUT = """  ROOT/images/{train2017,val2017}/<id>.jpg
  ROOT/annotations/{train2017,val2017}/<id>.png   (fine labels 0..181, 255 = unlabeled)
  ROOT/curated/{train2017,val2017}/Coco164kFew_Stuff_6.txt, Coco164kFull_Stuff_Coarse_7.txt"""


def cocostuff_label_table(variant: int) -> np.ndarray:
    """``[256]`` uint8 lookup: fine label -> class of COCO-Stuff-``variant`` (3 or 15), 255 for ignored pixels."""
    if variant not in COCOSTUFF_LISTS:
        raise DataError(f"COCO-Stuff variant must be 3 or 15, got {variant}")
    coarse = np.asarray(FINE_TO_COARSE)
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    if variant == 15:
        stuff = coarse >= 12
        table[np.flatnonzero(stuff)] = coarse[stuff] - 12
    else:
        for cls, c in enumerate(_COCO3_COARSE):
            table[np.flatnonzero(coarse == c)] = cls
    return table


def cocostuff_class_names(variant: int) -> tuple[str, ...]:
    """The class names of COCO-Stuff-``variant`` (3 or 15), in label order."""
    if variant == 3:
        return ("sky", "plant", "ground")
    return tuple(n.removesuffix("-stuff") for n in COARSE_NAMES[12:])


class CocoStuffDataset(FewDataset):
    """COCO-Stuff-3 / -15 over IIC curated lists (layout in the module docstring).

    Args:
        root: dataset folder. split: ``train2017``, ``val2017``, or several of them (a sequence or a comma-separated
            string: their curated lists concatenated in that order; IIC's "IID" protocol uses both). variant: 3 or 15.
        input_size: crop side (IIC: 128). scale: rescale before cropping (IIC: 0.33).
        list_name: curated list (default: IIC's list of the variant).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Sequence[str] = COCOSTUFF_IID_SPLITS,
        variant: int = 3,
        input_size: int = 128,
        scale: float = 0.33,
        list_name: str | None = None,
    ) -> None:
        self.root = require_path(root, "COCO-Stuff folder", COCO_LAYOUT)
        self.table = cocostuff_label_table(variant)
        name = list_name or COCOSTUFF_LISTS[variant]
        splits = tuple(s for s in split.split(",") if s) if isinstance(split, str) else tuple(split)
        if not splits:
            raise DataError("COCO-Stuff: name at least one split (train2017, val2017)")
        self.splits = splits
        #: (split, image id) of every image, the lists of ``splits`` in order
        self.items: list[tuple[str, str]] = []
        for part in splits:
            ids = read_list(self.root / "curated" / part / f"{name}.txt", "curated image list", COCO_LAYOUT)
            require_path(self.root / "images" / part, "COCO-Stuff image folder", COCO_LAYOUT)
            require_path(self.root / "annotations" / part, "COCO-Stuff annotation folder", COCO_LAYOUT)
            self.items += [(part, i) for i in ids]
        self.ids = [i for _, i in self.items]
        self.input_size, self.scale = int(input_size), float(scale)
        self.num_classes = variant
        self.class_names = list(cocostuff_class_names(variant))
        self.in_channels = 3
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        part, image_id = self.items[index]
        image = read_rgb(self.root / "images" / part / f"{image_id}.jpg")
        mask_path = self.root / "annotations" / part / f"{image_id}.png"
        fine = read_index_mask(mask_path)
        if fine.shape != image.shape[:2]:
            raise DataError(f"{mask_path} is {fine.shape}, its image is {image.shape[:2]}")
        check_values(fine, len(FINE_TO_COARSE), mask_path)
        labels: np.ndarray | None = self.table[fine.astype(np.int64)]
        image, labels = rescale(image, labels, self.scale)
        image, labels = crop(image, labels, self.input_size, rng)
        return sample_dict(image, labels, index)


def _builder(variant: int) -> Callable[[UnsupervisedOptions], UnsupervisedData]:
    def build(options: UnsupervisedOptions) -> UnsupervisedData:
        """The curated images of ``split`` (default: train2017 + val2017, IIC's "IID" protocol), evaluated on
        ``eval_split`` or on themselves."""
        root, size, scale = options.root, options.input_size, options.scale
        coco = CocoStuffDataset(root, options.split or COCOSTUFF_IID_SPLITS, variant, size, scale)
        ev = CocoStuffDataset(root, options.eval_split, variant, size, scale) if options.eval_split else coco
        return UnsupervisedData(coco, ev, coco.num_classes, coco.class_names, 3)

    build.__qualname__ = f"build_cocostuff{variant}"
    return build


def _checker(variant: int) -> CheckerFunc:
    def check(root: Path, report: CheckReport) -> None:
        """Check the curated list of the variant in train2017 and val2017: its images, annotations, sampled masks."""
        name = COCOSTUFF_LISTS[variant]
        for split in ("train2017", "val2017"):
            path = root / "curated" / split / f"{name}.txt"
            if not path.is_file():
                report.add_problem(
                    f"missing curated list (COCO-Stuff-{variant}): {path}\nExpected layout:\n{COCO_LAYOUT}"
                )
                continue
            ids = read_list(path, "curated list", COCO_LAYOUT)
            report.counts[f"{split} COCO-Stuff-{variant} images"] = len(ids)
            missing = [i for i in ids if not (root / "images" / split / f"{i}.jpg").is_file()]
            missing += [i for i in ids if not (root / "annotations" / split / f"{i}.png").is_file()]
            if missing:
                report.add_problem(
                    f"{len(missing)} images/annotations of {path.name} ({split}) are missing, e.g. {missing[:5]}"
                )
            for i in ids[:MASK_SAMPLES]:
                mask_path = root / "annotations" / split / f"{i}.png"
                if mask_path.is_file():
                    check_values(read_index_mask(mask_path), len(FINE_TO_COARSE), mask_path)

    check.__qualname__ = f"check_cocostuff{variant}"
    return check


for _variant in COCOSTUFF_LISTS:
    register_dataset(
        DatasetSpec(
            name=f"cocostuff{_variant}",
            description=f"COCO-Stuff 164k, IIC's COCO-Stuff-{_variant} curated lists and classes",
            check=_checker(_variant),
            # Only stuff classes are kept: there are no object classes.
            metadata=DatasetMetadata(class_names=cocostuff_class_names(_variant), thing_classes=()),
            layout=COCO_LAYOUT,
            unsupervised=_builder(_variant),
        )
    )
