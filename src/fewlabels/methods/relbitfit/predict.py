"""Labelling new text with a fine-tuned sequence classifier: read the inputs, run the model, write named labels.

Inputs are ``.txt`` (one example per line; a tab separates a sentence pair), ``.csv``/``.tsv`` with a header line
and ``.jsonl`` (one object per line). CSV/JSONL inputs are read by column name (``data.text_column`` and
``data.pair_column`` of the run, ``text`` by default): the header row is never classified, and a label column,
if the file has one, is ignored. The output, ``<stem>.predictions.jsonl`` per input, holds one object per example
with the label *name* (``data.label_names``, the GLUE task's labels, ``rotten``/``fresh``), its index and the
class probabilities in index order; a regression task writes ``score``.

The same code serves a run directory (``fewlabels predict RUN_DIR``) and a delta file on top of its base model
(``fewlabels predict-delta DELTA --base MODEL_DIR``), which stores the label names, the text columns and the
maximum length in its metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewlabels.data.base import DataError
from fewlabels.data.common import InputFiles
from fewlabels.data.glue import TextExample, read_text_file
from fewlabels.progress import Progress

__all__ = [
    "PredictionSettings",
    "SequenceClassifierExport",
    "logits_of",
    "output_paths",
    "predict_files",
    "read_unlabelled",
]


@dataclass(frozen=True)
class PredictionSettings:
    """How to read, tokenise and name the predictions of one model.

    Attributes:
        max_length: tokens per example (truncated), as in training.
        label_names: class names in index order, or None to write class indices.
        regression: the model predicts one score.
        text_column: CSV/JSONL column of the first sentence.
        pair_column: CSV/JSONL column of the second sentence, or None.
        batch_size: examples per forward pass.
    """

    max_length: int = 128
    label_names: tuple[str, ...] | None = None
    regression: bool = False
    text_column: str = "text"
    pair_column: str | None = None
    batch_size: int = 64

    def to_metadata(self) -> dict[str, Any]:
        """The JSON-serialisable fields that a delta file stores (everything but the batch size)."""
        return {
            "max_length": self.max_length,
            "label_names": list(self.label_names) if self.label_names is not None else None,
            "regression": self.regression,
            "text_column": self.text_column,
            "pair_column": self.pair_column,
        }

    @classmethod
    def from_metadata(cls, info: dict[str, Any], **overrides: Any) -> PredictionSettings:
        """Settings from a delta's metadata (missing keys keep their defaults), then ``overrides``."""
        names = info.get("label_names")
        values: dict[str, Any] = {
            "max_length": int(info.get("max_length") or 128),
            "label_names": tuple(names) if names else None,
            "regression": bool(info.get("regression", False)),
            "text_column": str(info.get("text_column") or "text"),
            "pair_column": info.get("pair_column") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def read_unlabelled(path: Path, text_column: str = "text", pair_column: str | None = None) -> list[TextExample]:
    """The examples of one input file (labels are 0 placeholders).

    Raises:
        DataError: the file is missing or empty, a CSV header or JSON object lacks the text column, a JSONL line
            is not an object, or a ``.txt`` file mixes single sentences and pairs.
    """
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".jsonl", ".json"):
        return read_text_file(path, text_column, pair_column, label_column=None)
    examples = []
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            text, _, pair = raw.rstrip("\n").partition("\t")
            examples.append(TextExample(text, pair or None, 0))
    if not examples:
        raise DataError(f"{path} holds no text")
    if len({e.text_pair is None for e in examples}) > 1:
        raise DataError(f"{path}: mix of single sentences and sentence pairs; use one kind per file")
    return examples


@torch.no_grad()
def logits_of(
    model: nn.Module, arrays: dict[str, torch.Tensor], device: torch.device, batch_size: int, label: str = "eval"
) -> torch.Tensor:
    """Logits [n, C] of tokenised examples ``arrays`` (``input_ids``, ``attention_mask``, ... each [n, L]).

    Examples are run in order of length and each batch is cut to its longest member, so short examples do not
    pay for the padding of long ones; the rows come back in the input order. The examples done are shown on stderr
    as ``label`` (:mod:`fewlabels.progress`).
    """
    lengths = arrays["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    out: torch.Tensor | None = None
    with Progress(len(order), label, "texts") as progress:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            batch = {k: v[rows, :width].to(device) for k, v in arrays.items()}
            logits = model(**batch).logits.float().cpu()
            if out is None:
                out = torch.empty(len(order), logits.shape[-1])
            out[rows] = logits
            progress.update(len(rows))
    if out is None:
        raise ValueError("no examples to run")
    return out


class SequenceClassifierExport(nn.Module):
    """A Hugging Face sequence classifier with a tensor-in, tensor-out forward (``fewlabels export``): token ids,
    attention mask (and token types) -> ``logits [N, num_labels]``, the ``.logits`` of its output object."""

    def __init__(self, model: nn.Module, token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.token_types = token_types

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.model(**inputs).logits


def _record(example: TextExample, row: torch.Tensor, settings: PredictionSettings) -> dict[str, Any]:
    record: dict[str, Any] = {"text": example.text}
    if example.text_pair is not None:
        record["text_pair"] = example.text_pair
    if settings.regression:
        record["score"] = float(row[0])
        return record
    index = int(row.argmax())
    names = settings.label_names
    record["label"] = names[index] if names is not None and index < len(names) else index
    record["label_index"] = index
    record["probabilities"] = [round(float(p), 6) for p in row.softmax(-1)]
    return record


def output_paths(inputs: Sequence[Path], out_dir: Path) -> list[Path]:
    """The predictions file of each input: ``<stem>.predictions.jsonl``, ``<file name>.predictions.jsonl`` when
    inputs share the stem, and ``<file name>-2.predictions.jsonl`` (3, ...) when they share the file name too, so
    that no input's predictions replace another's."""
    stems = [Path(p).stem.lower() for p in inputs]
    taken: set[str] = set()
    out = []
    for path in map(Path, inputs):
        base = path.stem if stems.count(path.stem.lower()) == 1 else path.name
        name, n = base, 2
        while name.lower() in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name.lower())
        out.append(out_dir / f"{name}.predictions.jsonl")
    return out


def predict_files(
    model: nn.Module,
    tokenizer: Any,
    inputs: Sequence[Path],
    out_dir: Path,
    device: torch.device,
    settings: PredictionSettings,
) -> list[Path]:
    """Label every example of ``inputs`` and write ``out_dir/<stem>.predictions.jsonl`` per input file
    (``<file name>.predictions.jsonl`` for inputs whose stems are shared, e.g. ``new.csv`` and ``new.jsonl``; then a
    number, ``-2``, for inputs whose names are shared too).

    Raises:
        DataError: before anything is written, when an input is not a file, or when an output would overwrite an
            input file (the same path, a symlink or a hard link to one).
    """
    for path in inputs:
        if not Path(path).is_file():
            raise DataError(f"input file not found: {path}")
    targets = output_paths(inputs, out_dir)
    sources = InputFiles(inputs)
    for path, target in zip(inputs, targets, strict=True):
        source = sources.overwritten_by(target)
        if source is not None:
            raise DataError(
                f"predict would overwrite the input file {source} (writing {target}, the predictions of {path}); "
                "choose an --out folder that holds none of the inputs"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, target in zip(inputs, targets, strict=True):
        examples = read_unlabelled(Path(path), settings.text_column, settings.pair_column)
        pairs = [e.text_pair or "" for e in examples] if examples[0].text_pair is not None else None
        encoded = tokenizer(
            [e.text for e in examples],
            pairs,
            truncation=True,
            max_length=settings.max_length,
            padding="max_length",
            return_tensors="pt",
        )
        arrays = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}
        logits = logits_of(model, arrays, device, settings.batch_size, label=f"predict {Path(path).name}")
        with target.open("w", encoding="utf-8") as fh:
            for example, row in zip(examples, logits):
                fh.write(json.dumps(_record(example, row, settings), ensure_ascii=False) + "\n")
        written.append(target)
    return written
