"""``cifar-fs``: CIFAR-FS (64 base, 16 val, 20 novel CIFAR-100 classes, 32 x 32).

Layout: ``ROOT/{split}.pickle`` or ``ROOT/CIFAR_FS_{split}.pickle``, each a dict with ``data`` ``N x 32 x 32 x 3`` and
``labels``.
"""

from __future__ import annotations

from pathlib import Path

from fewlabels.data.common import CheckReport
from fewlabels.data.fewshot import FewShotDataset, FewShotOptions, check_fewshot_splits, load_cifar_style
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

__all__ = ["CIFAR_FS_LAYOUT", "load_cifar_fs"]

CIFAR_FS_LAYOUT = "  ROOT/{train,val,test}.pickle   (or CIFAR_FS_{split}.pickle; dict data N x 32 x 32 x 3, labels)"


def load_cifar_fs(options: FewShotOptions, split: str) -> FewShotDataset:
    """A split of CIFAR-FS from its pickle."""
    return load_cifar_style("cifar-fs", "CIFAR_FS", CIFAR_FS_LAYOUT, options, split)


def check_cifar_fs(root: Path, report: CheckReport) -> None:
    """Count the images and classes of each split and flag classes too small for 5-shot episodes."""
    check_fewshot_splits(load_cifar_fs, root, report)


register_dataset(
    DatasetSpec(
        name="cifar-fs",
        description="CIFAR-FS ({split}.pickle)",
        check=check_cifar_fs,
        metadata=DatasetMetadata(ignore_index=None, image_size=32),
        layout=CIFAR_FS_LAYOUT,
        few_shot=load_cifar_fs,
    )
)
