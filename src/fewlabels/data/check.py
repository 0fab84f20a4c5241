"""Backend of ``fewlabels data check NAME ROOT``: validate a registered dataset's layout and count what is there.

The checker is the dataset's own (:attr:`~fewlabels.data.registry.DatasetSpec.check`); this module finds it by the
dataset's name (or an unambiguous old name, e.g. ``seg-folder``), checks ROOT as the dataset expects it (a folder,
any path, or nothing for generated datasets) and turns a DataError or OSError the checker raises into one more
problem of the report.
"""

from __future__ import annotations

from pathlib import Path

from fewlabels.data.base import DataError
from fewlabels.data.common import CheckReport
from fewlabels.data.registry import dataset_names, describe_datasets, lookup_dataset, suggest

__all__ = ["available_kinds", "check_dataset", "describe_kinds"]


def available_kinds() -> list[str]:
    """Sorted names of every registered dataset (what ``data check`` accepts)."""
    return dataset_names()


def describe_kinds() -> str:
    """One line per registered dataset with its families and description (for help and error messages)."""
    return describe_datasets()


def check_dataset(kind: str, root: str | Path | None = None) -> CheckReport:
    """Check the dataset ``kind`` at ``root`` and return the report (never raises for layout problems).

    An unknown ``kind`` raises a DataError listing the datasets with a "did you mean" suggestion. ``root`` is
    ignored for generated and packaged datasets.
    """
    spec = lookup_dataset(kind)
    if spec is None:
        kinds = available_kinds()
        raise DataError(f"unknown dataset kind {kind!r}.{suggest(kind, kinds)} Known kinds:\n{describe_kinds()}")
    if spec.root == "none":
        report = CheckReport(kind=spec.name, root="(generated, no folder needed)")
        path = Path(".")
    else:
        if root is None:
            raise DataError(f"data check {spec.name} needs ROOT, the dataset's {spec.root}")
        path = Path(root).expanduser()
        report = CheckReport(kind=spec.name, root=str(path))
        if spec.root == "folder" and not path.is_dir():
            report.add_problem(f"dataset root folder not found: {path}")
            return report
        if spec.root == "path" and not path.exists():
            report.add_problem(f"dataset file or folder not found: {path}")
            return report
    try:
        spec.check(path, report)
    except (DataError, OSError) as exc:
        report.add_problem(str(exc))
    if report.problems:
        report.ok = False
    return report
