"""Text classification/regression readers: GLUE TSV files, generic CSV/JSONL, Hugging Face datasets on disk.

Every reader returns :class:`TextExample` rows (``text``, optional ``text_pair``, ``label``: a class index, or
a float for regression). Errors name the file and the 1-based line (a missing column, an unknown label, a
score that is not a number), since a silently skipped row changes a few-sample benchmark.

GLUE layouts (the original ``glue_data/<Task>/`` downloads; ``root`` may be ``glue_data`` or the task folder):

=========  ================================================================  =========================
task       columns (0-based, or header names)                                labels
=========  ================================================================  =========================
cola       no header: source, label, original label, sentence                0 / 1
sst2       ``sentence label``                                                0 / 1
mrpc       ``Quality #1 ID #2 ID #1 String #2 String``                       0 / 1 (Quality)
stsb       ``... sentence1 sentence2 score``                                 float score 0-5
qqp        ``id qid1 qid2 question1 question2 is_duplicate``                 0 / 1
mnli(-mm)  ``... sentence1 sentence2 ... gold_label`` (dev_(mis)matched)     entailment/neutral/contra.
qnli       ``index question sentence label``                                 entailment/not_entailment
rte        ``index sentence1 sentence2 label``                               entailment/not_entailment
wnli       ``index sentence1 sentence2 label``                               0 / 1
=========  ================================================================  =========================
Label indices follow the Hugging Face ``glue`` dataset (e.g. MNLI: entailment 0, neutral 1, contradiction 2).
GLUE TSVs are read without quote processing (``csv.QUOTE_NONE``): sentences contain unbalanced quotes.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fewlabels.data.base import DataError
from fewlabels.data.common import CheckReport, open_csv, read_jsonl
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

__all__ = [
    "GLUE",
    "GLUE_TASKS",
    "GlueTask",
    "TextExample",
    "glue_task",
    "read_glue",
    "read_hf_disk",
    "read_text_file",
]


@dataclass(frozen=True)
class TextExample:
    """One example: a sentence (or sentence pair) and its label (class index, or a float score)."""

    text: str
    text_pair: str | None
    label: int | float


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is laid out on disk."""

    name: str
    folder: str
    text: str | int
    text_pair: str | int | None
    label: str | int
    labels: tuple[str, ...] | None  # None: regression
    header: bool = True
    dev_file: str = "dev.tsv"

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("cola", "CoLA", 3, None, 1, _BINARY, header=False),
    "sst2": GlueTask("sst2", "SST-2", "sentence", None, "label", _BINARY),
    "mrpc": GlueTask("mrpc", "MRPC", "#1 String", "#2 String", "Quality", _BINARY),
    "stsb": GlueTask("stsb", "STS-B", "sentence1", "sentence2", "score", None),
    "qqp": GlueTask("qqp", "QQP", "question1", "question2", "is_duplicate", _BINARY),
    "mnli": GlueTask(
        "mnli",
        "MNLI",
        "sentence1",
        "sentence2",
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        dev_file="dev_matched.tsv",
    ),
    "mnli-mm": GlueTask(
        "mnli-mm",
        "MNLI",
        "sentence1",
        "sentence2",
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        dev_file="dev_mismatched.tsv",
    ),
    "qnli": GlueTask("qnli", "QNLI", "question", "sentence", "label", _NLI2),
    "rte": GlueTask("rte", "RTE", "sentence1", "sentence2", "label", _NLI2),
    "wnli": GlueTask("wnli", "WNLI", "sentence1", "sentence2", "label", _BINARY),
}
_ALIASES = {
    "sst-2": "sst2",
    "sts-b": "stsb",
    "mnli-m": "mnli",
    "mnli_mm": "mnli-mm",
    "mnli-mismatched": "mnli-mm",
}

_GLUE_LAYOUT = """  <root>/<Task>/train.tsv, dev.tsv   (Task: CoLA, SST-2, MRPC, STS-B, QQP, QNLI, RTE, WNLI)
  <root>/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv
  (or <root> is the task folder itself)"""


def glue_task(name: str) -> GlueTask:
    """The :class:`GlueTask` of ``name`` (case-insensitive; ``sst-2``, ``sts-b``, ``mnli-m`` accepted)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def _task_dir(root: Path, task: GlueTask) -> Path:
    for candidate in (root / task.folder, root / task.folder.lower(), root):
        if (candidate / "train.tsv").is_file() or (candidate / task.dev_file).is_file():
            return candidate
    raise DataError(f"GLUE {task.name} files not found under {root}\nExpected layout:\n{_GLUE_LAYOUT}")


def _split_file(task: GlueTask, split: str) -> str:
    if split == "train":
        return "train.tsv"
    if split in ("dev", "validation"):
        return task.dev_file
    if split in ("dev_matched", "dev_mismatched") and task.folder == "MNLI":
        return f"{split}.tsv"
    raise DataError(f"unknown split {split!r} for GLUE {task.name}; use 'train' or 'dev'")


def _parse_label(raw: str, labels: Sequence[str] | None, where: str) -> int | float:
    value = raw.strip()
    if labels is None:
        try:
            return float(value)
        except ValueError:
            raise DataError(f"{where}: score {raw!r} is not a number") from None
    if value not in labels:
        raise DataError(f"{where}: unknown label {raw!r}; expected one of {', '.join(labels)}")
    return labels.index(value)


def read_glue(root: str | Path, task: str, split: str = "train") -> list[TextExample]:
    """Read one split of a GLUE task from its original TSV file.

    Args:
        root: ``glue_data`` (holding ``<Task>/``) or the task folder itself.
        task: ``cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte, wnli``; for ``mnli``/``mnli-mm`` the
            ``dev`` split is ``dev_matched.tsv`` / ``dev_mismatched.tsv``.
        split: ``train`` or ``dev``.
    """
    spec = glue_task(task)
    path = _task_dir(Path(root).expanduser(), spec) / _split_file(spec, split)
    if not path.is_file():
        raise DataError(f"GLUE {spec.name} {split} file not found: {path}\nExpected layout:\n{_GLUE_LAYOUT}")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    examples: list[TextExample] = []
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns: dict[str | int, int] = {}
        if spec.header:
            header = next(rows, None)
            if header is None:
                raise DataError(f"{path}: empty file (expected a header line)")
            columns = {name.strip(): i for i, name in enumerate(header)}
            # MNLI dev files carry label1..label5 and then gold_label: take the gold label (the last column).
            wanted = [c for c in (spec.text, spec.text_pair, spec.label) if c is not None]
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise DataError(f"{path}, line 1: header lacks the column(s) {missing}; found {header}")
        # column key (a header name, or a position when there is no header) -> position in the row
        index: dict[str | int, int] = {
            c: (columns[c] if spec.header else int(c)) for c in (spec.text, spec.text_pair, spec.label) if c is not None
        }
        width = max(index.values()) + 1
        for line, row in enumerate(rows, start=2 if spec.header else 1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            where = f"{path}, line {line}"
            if len(row) < width:
                raise DataError(f"{where}: expected at least {width} tab-separated columns, found {len(row)}")
            pair = row[index[spec.text_pair]] if spec.text_pair is not None else None
            label = _parse_label(row[index[spec.label]], spec.labels, where)
            examples.append(TextExample(row[index[spec.text]], pair, label))
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def _label_from_value(value: object, labels: Sequence[str] | None, regression: bool, where: str) -> int | float:
    if regression:
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DataError(f"{where}: label {value!r} is not a number") from None
    text = str(value).strip()
    if labels is not None:
        if text not in labels:
            raise DataError(f"{where}: unknown label {value!r}; expected one of {', '.join(labels)}")
        return list(labels).index(text)
    try:
        number = int(text)
    except ValueError:
        raise DataError(f"{where}: label {value!r} is not a class index; pass label names to map it") from None
    if number < 0:
        raise DataError(f"{where}: negative class index {number}")
    return number


def read_text_file(
    path: str | Path,
    text_column: str = "text",
    pair_column: str | None = None,
    label_column: str | None = "label",
    labels: Sequence[str] | None = None,
    regression: bool = False,
) -> list[TextExample]:
    """Read a generic ``.csv`` (header line; ``,`` or tab for ``.tsv``) or ``.jsonl`` file (one object per
    line).

    Args:
        path: the file; its suffix picks the format (``.csv``, ``.tsv``, ``.jsonl``/``.json``).
        text_column, pair_column, label_column: column (key) names; ``pair_column=None`` for single sentences,
            ``label_column=None`` for examples to label (every label is then 0, and a label column is ignored).
        labels: label names in index order; when None labels must be class indices (or numbers if ``regression``).
        regression: labels are float scores.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"text file not found: {p}")
    wanted = [c for c in (text_column, pair_column, label_column) if c is not None]
    examples: list[TextExample] = []

    def add(record: dict, where: str) -> None:
        missing = [c for c in wanted if c not in record or record[c] is None]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}")
        pair = str(record[pair_column]) if pair_column is not None else None
        label = 0 if label_column is None else _label_from_value(record[label_column], labels, regression, where)
        examples.append(TextExample(str(record[text_column]), pair, label))

    if p.suffix.lower() in (".jsonl", ".json"):
        for line, record in read_jsonl(p):
            add(record, f"{p}, line {line}")
    elif p.suffix.lower() in (".csv", ".tsv"):
        with open_csv(p) as reader:
            header = reader.fieldnames or []
            absent = [c for c in wanted if c not in header]
            if absent:
                raise DataError(f"{p}, line 1: header lacks the column(s) {absent}; found {header}")
            for record in reader:
                add(record, f"{p}, line {reader.line_num}")
    else:
        raise DataError(f"{p}: unsupported text file type {p.suffix!r}; use .csv, .tsv or .jsonl")
    if not examples:
        raise DataError(f"{p} holds no examples")
    return examples


def read_hf_disk(
    path: str | Path,
    split: str,
    text_column: str = "sentence",
    pair_column: str | None = None,
    label_column: str = "label",
    regression: bool = False,
) -> list[TextExample]:
    """Read a split of a Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (needs ``datasets``).

    Rows with a negative label (the unlabelled GLUE test splits use -1) are rejected with their row number.
    """
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(
            "reading a dataset saved with `datasets.save_to_disk` needs the `datasets` package, which is not "
            "installed; install it (`pip install datasets`) or export the split as CSV/JSONL (kind csv/jsonl)"
        ) from None
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"Hugging Face dataset folder not found: {p}")
    data = load_from_disk(str(p))
    if hasattr(data, "keys"):
        if split not in data:
            raise DataError(f"{p} has no split {split!r}; splits: {', '.join(data.keys())}")
        data = data[split]
    examples: list[TextExample] = []
    for row, record in enumerate(data):
        where = f"{p} [{split}], row {row}"
        missing = [c for c in (text_column, pair_column, label_column) if c is not None and c not in record]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}")
        label = _label_from_value(record[label_column], None, regression, where)
        pair = str(record[pair_column]) if pair_column is not None else None
        examples.append(TextExample(str(record[text_column]), pair, label))
    return examples


def check_glue(root: Path, report: CheckReport) -> None:
    """Count the examples of every GLUE task found under ``root`` and report unreadable files."""
    folders = {spec.folder.lower() for spec in GLUE_TASKS.values()}
    if root.name.lower() in folders and (root / "train.tsv").is_file():
        tasks = [s for s in GLUE_TASKS.values() if s.folder.lower() == root.name.lower()]
    else:
        tasks = [s for s in GLUE_TASKS.values() if (root / s.folder).is_dir() or (root / s.folder.lower()).is_dir()]
    if not tasks:
        report.add_problem(f"no GLUE task folder under {root}\nExpected layout:\n{_GLUE_LAYOUT}")
        return
    for spec in tasks:
        # mnli and mnli-mm share MNLI/train.tsv: count it once.
        for split in ("dev",) if spec.name == "mnli-mm" else ("train", "dev"):
            try:
                report.counts[f"{spec.name} {split}"] = len(read_glue(root, spec.name, split))
            except DataError as err:
                report.add_problem(str(err))


GLUE = register_dataset(
    DatasetSpec(
        name="glue",
        description="GLUE original TSV files (glue_data/<Task>/train.tsv, dev*.tsv) or one task folder",
        check=check_glue,
        # The labels are the task's (data.task): see GLUE_TASKS.
        metadata=DatasetMetadata(ignore_index=None),
        layout=_GLUE_LAYOUT,
        text=read_glue,
    )
)
