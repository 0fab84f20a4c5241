"""``csv``, ``jsonl`` and ``hf-disk``: a user's own text examples, as files or as a saved Hugging Face dataset.

``csv`` (and ``.tsv``) files have a header line, ``jsonl`` files one JSON object per line; both name their columns
with ``data.text_column``, ``data.pair_column`` and ``data.label_column`` and are read by
:func:`~fewlabels.data.glue.read_text_file`. ``hf-disk`` is a folder written by ``datasets.save_to_disk``, read by
:func:`~fewlabels.data.glue.read_hf_disk` (it needs the ``datasets`` package). For ``data check``, ROOT is one file
or a folder holding such files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from fewlabels.data.base import DataError
from fewlabels.data.common import CheckReport, open_csv, read_jsonl
from fewlabels.data.glue import read_hf_disk, read_text_file
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

__all__ = ["check_csv", "check_hf_disk", "check_jsonl"]

_TEXT_FILE_LAYOUT = """  a .csv / .tsv file with a header line (text[, text_pair], label columns), or
  a .jsonl file of one JSON object per line (same keys); ROOT may also be a folder of such files"""

_HF_DISK_LAYOUT = """  ROOT/dataset_dict.json + ROOT/<split>/   (DatasetDict.save_to_disk), or
  ROOT/state.json + ROOT/data-*.arrow       (Dataset.save_to_disk)"""


def _files(root: Path, suffixes: Sequence[str]) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def check_csv(root: Path, report: CheckReport) -> None:
    """Count the rows of each CSV/TSV file (ROOT, or the files in the folder ROOT) and report unreadable ones."""
    files = _files(root, (".csv", ".tsv"))
    if not files:
        report.add_problem(f"no .csv or .tsv file at {root}\nExpected layout:\n{_TEXT_FILE_LAYOUT}")
    for path in files:
        try:
            with open_csv(path) as reader:
                rows = sum(1 for _ in reader)
                report.counts[f"{path.name} rows ({', '.join(reader.fieldnames or [])})"] = rows
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            report.add_problem(f"cannot read {path}: {err}")


def check_jsonl(root: Path, report: CheckReport) -> None:
    """Count the objects of each JSONL file (ROOT, or the files in the folder ROOT) and report invalid lines."""
    files = _files(root, (".jsonl", ".json"))
    if not files:
        report.add_problem(f"no .jsonl file at {root}\nExpected layout:\n{_TEXT_FILE_LAYOUT}")
    for path in files:
        rows = 0
        try:
            for _ in read_jsonl(path):
                rows += 1
        except DataError as err:  # the first invalid line, named
            report.add_problem(str(err))
        except (OSError, UnicodeDecodeError) as err:
            report.add_problem(f"cannot read {path}: {err}")
        report.counts[f"{path.name} rows"] = rows


def check_hf_disk(root: Path, report: CheckReport) -> None:
    """Check that ROOT is a dataset saved with ``save_to_disk`` and count its saved splits."""
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        saved = [s for s in splits if (root / s / "state.json").is_file()]
        report.counts["splits"] = len(saved)
        for split in splits:
            if split not in saved:
                report.add_problem(f"split {split!r} is listed in dataset_dict.json but {root / split} is not saved")
    elif (root / "state.json").is_file():
        report.counts["splits"] = 1
    else:
        report.add_problem(f"{root} is not a dataset saved with save_to_disk\nExpected layout:\n{_HF_DISK_LAYOUT}")


for _name, _check, _description in (
    ("csv", check_csv, "your text examples in a CSV/TSV file (header with text[, text_pair], label)"),
    ("jsonl", check_jsonl, "your text examples in a JSONL file (one object per line)"),
):
    register_dataset(
        DatasetSpec(
            name=_name,
            description=_description,
            check=_check,
            metadata=DatasetMetadata(ignore_index=None),
            layout=_TEXT_FILE_LAYOUT,
            text=read_text_file,
            root="path",
        )
    )

register_dataset(
    DatasetSpec(
        name="hf-disk",
        description="a Hugging Face dataset saved with save_to_disk (needs the datasets package)",
        check=check_hf_disk,
        metadata=DatasetMetadata(ignore_index=None),
        layout=_HF_DISK_LAYOUT,
        text=read_hf_disk,
    )
)
