"""Text data of RelBitFit runs: load a task's examples, draw the few-sample training set, tokenise once.

Examples are tokenised once when the dataset is built and padded to ``max_length`` so that the engine's
default collation stacks them; ``training_step`` trims each batch to its longest example (right padding is
masked, and the relative index of the kept positions does not change), so short sentences do not pay for 128
positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fewlabels.data.base import DataError, FewDataset
from fewlabels.data.glue import TextExample, glue_task, read_glue, read_hf_disk, read_text_file
from fewlabels.data.splits import labeled_unlabeled_split
from fewlabels.methods.relbitfit.config import TextTaskConfig

__all__ = [
    "TaskData",
    "TokenizedTextDataset",
    "dev_and_train_indices",
    "few_sample_indices",
    "load_task",
    "position_limit",
]


@dataclass
class TaskData:
    """A loaded task: all training examples, evaluation sets (name -> examples) and the label space.

    ``label_names`` names the classes in index order (None when the task has integer labels only, or is a
    regression).
    """

    train: list[TextExample]
    evals: dict[str, list[TextExample]]
    num_labels: int
    regression: bool
    glue_task: str | None  # GLUE metric set to use, None for accuracy (or pearson/spearman for regression)
    label_names: tuple[str, ...] | None = None


def few_sample_indices(total: int, n: int, seed: int) -> list[int]:
    """Indices of the few-sample training set: ``n`` of ``total`` drawn without replacement (all if n == 0).

    A pure function of ``(total, n, seed)``, sorted ascending; for one seed a smaller draw is contained in a
    larger one.
    """
    if n == 0 or n == total:
        return list(range(total))
    if n > total:
        raise DataError(f"data.n_train={n} is larger than the training set ({total} examples)")
    return labeled_unlabeled_split(total, n, seed)[0]


def dev_and_train_indices(total: int, dev_size: int, n: int, seed: int) -> tuple[list[int], list[int]]:
    """The dev split and the few-sample training set of a pool of ``total`` examples, disjoint.

    The dev split (``dev_size`` examples) is drawn first, from the seed alone, so it is the same for every N and
    every variant of a seed; the N training examples are then drawn (:func:`few_sample_indices`) from the rest,
    so a smaller N is still contained in a larger one. Both lists are sorted ascending.

    Raises:
        DataError: the pool cannot hold ``dev_size`` + ``n`` examples.
    """
    if dev_size == 0:
        return [], few_sample_indices(total, n, seed)
    if dev_size + n > total or dev_size >= total:
        raise DataError(
            f"data.dev_size={dev_size} + data.n_train={n} examples do not fit in the training pool ({total}); "
            "lower one of them"
        )
    dev, rest = labeled_unlabeled_split(total, dev_size, seed + 7919)  # another stream than the N draw
    chosen = few_sample_indices(len(rest), n, seed)
    return sorted(dev), [rest[i] for i in chosen]


def _infer_num_labels(examples: Sequence[TextExample], configured: int, where: str) -> int:
    top = max(int(e.label) for e in examples)
    if configured and top >= configured:
        raise DataError(f"{where}: label {top} is out of range for data.num_labels={configured}")
    return configured or top + 1


def load_task(cfg: TextTaskConfig) -> TaskData:
    """Read the configured task (its training examples and its evaluation set(s))."""
    if cfg.dataset == "rotten-tomatoes":
        from fewlabels.data.text import rotten_tomatoes_splits

        # The test set is fixed (split seed 0) so that every run seed is evaluated on the same 2,000 snippets.
        train_rows, test_rows = rotten_tomatoes_splits(seed=0, test_size=cfg.rt_test_size)
        from fewlabels.data.text import ROTTEN_TOMATOES_LABELS

        as_examples = [[TextExample(t, None, int(y)) for t, y in rows] for rows in (train_rows, test_rows)]
        return TaskData(as_examples[0], {"test": as_examples[1]}, 2, False, None, tuple(ROTTEN_TOMATOES_LABELS))
    if cfg.dataset == "glue":
        spec = glue_task(cfg.task)
        evals = {"dev": read_glue(cfg.root, spec.name, "dev")}
        if spec.name == "mnli":
            # MNLI models are evaluated on both dev sets; the matched one selects the checkpoint.
            evals["dev_mm"] = read_glue(cfg.root, "mnli-mm", "dev")
        train = read_glue(cfg.root, spec.name, "train")
        return TaskData(train, evals, spec.num_labels, spec.is_regression, spec.name, spec.labels)
    pair = cfg.pair_column or None
    if cfg.dataset == "hf-disk":
        read = [
            read_hf_disk(cfg.root, split, cfg.text_column, pair, cfg.label_column, cfg.regression)
            for split in (cfg.train_split, cfg.eval_split)
        ]
        where = cfg.root
    else:
        labels = cfg.label_names or None
        read = [
            read_text_file(f, cfg.text_column, pair, cfg.label_column, labels, cfg.regression)
            for f in (cfg.train_file, cfg.eval_file)
        ]
        where = cfg.train_file
    if cfg.regression:
        num_labels = 1
    else:
        num_labels = len(cfg.label_names) or _infer_num_labels(read[0] + read[1], cfg.num_labels, where)
    names = tuple(cfg.label_names) if cfg.label_names and not cfg.regression else None
    return TaskData(read[0], {"eval": read[1]}, num_labels, cfg.regression, None, names)


def position_limit(model_config: Any) -> int:
    """Longest token sequence the model's absolute position table supports.

    RoBERTa numbers positions from ``pad_token_id + 1`` (514 rows hold 512 tokens); BERT from 0.
    """
    limit = int(model_config.max_position_embeddings)
    if getattr(model_config, "model_type", "") == "roberta":
        limit -= int(model_config.pad_token_id) + 1
    return limit


class TokenizedTextDataset(FewDataset):
    """Examples tokenised once into fixed-size int64 arrays.

    ``sample`` returns ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes
    them), each [max_length], plus ``labels`` (int64 class, or float32 score for regression).
    """

    def __init__(
        self, examples: Sequence[TextExample], tokenizer: Any, max_length: int, regression: bool = False
    ) -> None:
        if not examples:
            raise DataError("cannot build a text dataset from zero examples")
        texts = [e.text for e in examples]
        pairs = [e.text_pair or "" for e in examples] if examples[0].text_pair is not None else None
        encoded = tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=max_length,
            padding="max_length",
            return_tensors="np",
        )
        self.arrays: dict[str, torch.Tensor] = {
            key: torch.from_numpy(np.asarray(encoded[key], dtype=np.int64))
            for key in ("input_ids", "attention_mask", "token_type_ids")
            if key in encoded
        }
        dtype = torch.float32 if regression else torch.int64
        self.labels = torch.tensor([e.label for e in examples], dtype=dtype)
        self.regression = regression

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        # No augmentation for text: rng is unused, the example is a pure function of its index.
        item = {key: value[index] for key, value in self.arrays.items()}
        item["labels"] = self.labels[index]
        return item


def trim_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the right padding shared by the whole batch ([B, max_length] -> [B, longest example]).

    One host sync (the length) per batch; on CPU, and for the short sentences of GLUE, this is cheaper than
    attending over 128 positions.
    """
    length = int(batch["attention_mask"].sum(dim=1).max())
    return {k: (v[:, :length] if v.ndim == 2 and k != "labels" else v) for k, v in batch.items()}
