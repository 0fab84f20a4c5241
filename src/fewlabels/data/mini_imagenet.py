"""``mini-imagenet``: mini-ImageNet (64 base, 16 val, 20 novel classes of 600 images, 84 x 84).

Two layouts are read: the RFS pickles (preferred), each a dict with ``data`` uint8 ``N x 84 x 84 x 3`` and
``labels``, written by Python 2 in older releases (read with ``encoding="latin1"``); or Ravi & Larochelle's
``{train,val,test}.csv`` (``filename,label``) with the images in ``images/``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fewlabels.data.base import DataError
from fewlabels.data.common import CheckReport
from fewlabels.data.fewshot import (
    ArrayFewShotDataset,
    FewShotDataset,
    FewShotOptions,
    FileFewShotDataset,
    check_fewshot_splits,
    data_and_labels,
    layout_error,
    normalise_split,
    read_pickle,
)
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

__all__ = ["MINI_IMAGENET_LAYOUT", "MINI_PICKLES", "load_mini_imagenet"]

#: The RFS pickle of each split; ``train_phase_val`` / ``train_phase_test`` hold held-out images of the base classes.
MINI_PICKLES = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "train_phase_val": "miniImageNet_category_split_train_phase_val.pickle",
    "train_phase_test": "miniImageNet_category_split_train_phase_test.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
}

MINI_IMAGENET_LAYOUT = (
    "  ROOT/miniImageNet_category_split_train_phase_train.pickle   (RFS pickles: dict data, labels)\n"
    "  ROOT/miniImageNet_category_split_val.pickle\n"
    "  ROOT/miniImageNet_category_split_test.pickle\n"
    "or\n"
    "  ROOT/{train,val,test}.csv   (filename,label)\n"
    "  ROOT/images/<filename>"
)


def load_mini_imagenet(options: FewShotOptions, split: str) -> FewShotDataset:
    """A split from the RFS pickles (preferred) or the Ravi & Larochelle CSV + images layout."""
    root = Path(options.root).expanduser()
    split = split if split in MINI_PICKLES else normalise_split(split)
    pkl = root / MINI_PICKLES[split]
    if pkl.is_file():
        images, labels = data_and_labels(read_pickle(pkl), pkl)
        return ArrayFewShotDataset(images, labels, options.image_size or 84, source=str(pkl))
    table = root / f"{split}.csv"
    if table.is_file():
        paths, names = [], []
        with table.open(newline="") as fh:
            for row in csv.reader(fh):
                if not row or row[0].strip().lower() == "filename":
                    continue
                if len(row) < 2:
                    raise DataError(f"{table}: expected 'filename,label' rows, got {row}")
                paths.append(root / "images" / row[0].strip())
                names.append(row[1].strip())
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise DataError(f"{table}: {len(absent)} listed image(s) missing, e.g. {absent[0]}")
        return FileFewShotDataset(paths, names, options.image_size or 84, source=str(table))
    raise layout_error("mini-imagenet", f"found neither {pkl.name} nor {table.name} in {root}", MINI_IMAGENET_LAYOUT)


def check_mini_imagenet(root: Path, report: CheckReport) -> None:
    """Count the images and classes of each split and flag classes too small for 5-shot episodes."""
    check_fewshot_splits(load_mini_imagenet, root, report)


register_dataset(
    DatasetSpec(
        name="mini-imagenet",
        description="mini-ImageNet (RFS pickles or CSV + images)",
        check=check_mini_imagenet,
        metadata=DatasetMetadata(ignore_index=None, image_size=84),
        layout=MINI_IMAGENET_LAYOUT,
        few_shot=load_mini_imagenet,
    )
)
