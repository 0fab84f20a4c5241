"""Configuration of RelBitFit runs (one method, ``relbitfit``, whose ``model.variant`` also selects BitFit and
full fine-tuning, so the three are compared with identical data, schedule and evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fewlabels.config import RunConfig, TrainConfig, fail

__all__ = ["RelBitFitConfig", "RelBitFitModelConfig", "TextTaskConfig"]


@dataclass
class RelBitFitModelConfig:
    """Which pretrained encoder, and which of its parameters are fine-tuned."""

    path: str = field(
        default="",
        metadata={"help": "pretrained BERT/RoBERTa directory (empty: the packaged MiniLM-L6 BERT)"},
    )
    variant: Literal["full", "bitfit", "relbitfit"] = field(
        default="relbitfit", metadata={"help": "full fine-tuning, BitFit (biases + head) or RelBitFit"}
    )
    pt: bool = field(default=False, metadata={"help": "RelBitFit: one relative table shared by all layers"})
    lr: bool = field(default=False, metadata={"help": "RelBitFit: low-rank key table R = E U (rank below)"})
    clip: bool = field(default=False, metadata={"help": "RelBitFit: only l_max distances get their own entry"})
    rank: int = field(default=64, metadata={"help": "d' of the low-rank table", "min": 1})
    l_max: int = field(default=32, metadata={"help": "N under clip", "min": 1})
    relative_index: Literal["absolute", "signed"] = field(
        default="absolute", metadata={"help": "absolute: min(|i-j|, N-1), N entries; signed: 2N-1 entries"}
    )
    dropout: float = field(
        default=-1.0,
        metadata={
            "help": "hidden/attention/classifier dropout (-1: keep the checkpoint's, 0.1 for BERT)",
            "min": -1,
            "max": 1,
        },
    )
    attn_implementation: Literal["sdpa", "eager"] = field(
        default="sdpa", metadata={"help": "attention kernel; both take the relative bias"}
    )

    def validate(self) -> None:
        if self.dropout < 0 and self.dropout != -1:
            fail("model.dropout", f"a rate in [0, 1], or -1 to keep the checkpoint's; got {self.dropout}")
        if self.variant != "relbitfit" and (self.pt or self.lr or self.clip):
            fail("model.variant", f"pt/lr/clip are RelBitFit options; they do nothing with {self.variant!r}")


@dataclass
class TextTaskConfig:
    """The text task: where the examples come from and how they are tokenised."""

    dataset: Literal["rotten-tomatoes", "glue", "csv", "jsonl", "hf-disk"] = field(
        default="rotten-tomatoes",
        metadata={"help": "rotten-tomatoes (embedded), glue TSVs, csv, jsonl, hf-disk"},
    )
    task: str = field(
        default="sst2", metadata={"help": "GLUE task (cola sst2 mrpc stsb qqp mnli mnli-mm qnli rte wnli)"}
    )
    root: str = field(default="", metadata={"help": "glue_data folder, or the dataset folder for hf-disk"})
    train_file: str = field(default="", metadata={"help": "csv/jsonl: training file"})
    eval_file: str = field(default="", metadata={"help": "csv/jsonl: evaluation file"})
    train_split: str = field(default="train", metadata={"help": "hf-disk: training split name"})
    eval_split: str = field(default="validation", metadata={"help": "hf-disk: evaluation split name"})
    text_column: str = field(default="text", metadata={"help": "csv/jsonl/hf-disk: first sentence column"})
    pair_column: str = field(default="", metadata={"help": "csv/jsonl/hf-disk: second sentence column ('' = none)"})
    label_column: str = field(default="label", metadata={"help": "csv/jsonl/hf-disk: label column"})
    label_names: list[str] = field(
        default_factory=list,
        metadata={"help": "csv/jsonl: label names in index order (empty: integer labels)"},
    )
    num_labels: int = field(default=0, metadata={"help": "csv/jsonl/hf-disk: classes (0 = infer)", "min": 0})
    regression: bool = field(default=False, metadata={"help": "csv/jsonl/hf-disk: float targets (MSE loss)"})
    n_train: int = field(
        default=2000,
        metadata={"help": "few-sample N: training examples drawn with the seed (0 = all)", "min": 0},
    )
    sample_seed: int = field(default=-1, metadata={"help": "seed of the N-example draw (-1: the run seed)"})
    max_eval: int = field(default=0, metadata={"help": "evaluate on the first K examples (0 = all)", "min": 0})
    rt_test_size: int = field(default=2000, metadata={"help": "rotten-tomatoes: held-out test examples", "min": 1})
    max_length: int = field(default=128, metadata={"help": "tokens per example (truncated), also N", "min": 2})
    eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch size", "min": 1})

    def validate(self) -> None:
        if self.dataset in ("glue", "hf-disk") and not self.root:
            fail("data.root", f"dataset {self.dataset!r} needs data.root=/path/to/the/data")
        if self.dataset in ("csv", "jsonl") and not (self.train_file and self.eval_file):
            fail("data.train_file", f"dataset {self.dataset!r} needs data.train_file and data.eval_file")
        if self.dataset == "glue":
            from fewlabels.data.base import DataError
            from fewlabels.data.glue import glue_task

            try:
                glue_task(self.task)
            except DataError as err:
                fail("data.task", str(err))


@dataclass
class RelBitFitConfig(RunConfig):
    """Few-sample fine-tuning of a pretrained BERT/RoBERTa: RelBitFit, BitFit or full fine-tuning.

    Training defaults follow the BitFit recipe: AdamW without weight decay, constant lr 1e-3 (use 1e-5 for
    full fine-tuning), batch 8, gradient clipping 1.0, max length 128.
    """

    method: str = "relbitfit"
    model: RelBitFitModelConfig = field(default_factory=RelBitFitModelConfig)
    data: TextTaskConfig = field(default_factory=TextTaskConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=500,  # 2 epochs of N = 2000 at batch 8; the shipped configs set train.epochs instead
            batch_size=8,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.0,
            scheduler="constant",
            max_grad_norm=1.0,
            checkpoint_every=500,
            log_every=20,
        )
    )
