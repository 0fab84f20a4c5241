"""``fc100``: FC100 (CIFAR-100 split by superclass: 60 base, 20 val, 20 novel classes, 32 x 32).

Layout: ``ROOT/{split}.pickle`` or ``ROOT/FC100_{split}.pickle``, each a dict with ``data`` ``N x 32 x 32 x 3`` and
``labels``.
"""

from __future__ import annotations

from pathlib import Path

from fewlabels.data.common import CheckReport
from fewlabels.data.fewshot import FewShotDataset, FewShotOptions, check_fewshot_splits, load_cifar_style
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

__all__ = ["FC100_LAYOUT", "load_fc100"]

FC100_LAYOUT = "  ROOT/{train,val,test}.pickle   (or FC100_{split}.pickle; dict data N x 32 x 32 x 3, labels)"


def load_fc100(options: FewShotOptions, split: str) -> FewShotDataset:
    """A split of FC100 from its pickle."""
    return load_cifar_style("fc100", "FC100", FC100_LAYOUT, options, split)


def check_fc100(root: Path, report: CheckReport) -> None:
    """Count the images and classes of each split and flag classes too small for 5-shot episodes."""
    check_fewshot_splits(load_fc100, root, report)


register_dataset(
    DatasetSpec(
        name="fc100",
        description="FC100 ({split}.pickle)",
        check=check_fc100,
        metadata=DatasetMetadata(ignore_index=None, image_size=32),
        layout=FC100_LAYOUT,
        few_shot=load_fc100,
    )
)
