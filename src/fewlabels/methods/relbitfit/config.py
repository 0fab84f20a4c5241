"""Configuration of RelBitFit runs (one method, ``relbitfit``, whose ``model.variant`` also selects BitFit and
full fine-tuning, so the three are compared with identical data, schedule and evaluation).

Each variant has its own learning rate and budget (:data:`VARIANT_DEFAULTS`): ``train.lr: 0`` and
``train.epochs: -1``, the defaults, are replaced by the variant's values when the config is built, so the saved
``config.yaml`` of a run holds the numbers it trained with. The schedule is a linear warm-up over ``train.warmup_ratio``
of the steps, then a linear decay to 0 (``scheduler: poly`` with ``poly_power: 1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fewlabels.config import RunConfig, TrainConfig, fail

__all__ = ["VARIANT_DEFAULTS", "RelBitFitConfig", "RelBitFitModelConfig", "RelBitFitTrainConfig", "TextTaskConfig"]

#: variant -> (peak learning rate, epochs) used when ``train.lr`` is 0 / ``train.epochs`` is -1. Full fine-tuning:
#: the usual BERT/RoBERTa rate (1e-5 to 3e-5); BitFit/RelBitFit: the BitFit recipe (1e-3, ~16 epochs at batch 8).
VARIANT_DEFAULTS: dict[str, tuple[float, float]] = {
    "full": (2e-5, 10.0),
    "bitfit": (1e-3, 16.0),
    "relbitfit": (1e-3, 16.0),
}


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
    head: Literal["pooler", "cls", "mean"] = field(
        default="pooler",
        metadata={
            "help": "classification head, always trained: pooler (BERT pooler dense + classifier, RoBERTa's own "
            "head; the thesis' counts), cls or mean (one linear layer on the first token / the token mean)"
        },
    )
    query_bias: bool = field(
        default=False,
        metadata={"help": "RelBitFit: relative key term reads q_i with b_q (default: the thesis' z_i W_q)"},
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
        if self.variant != "relbitfit" and self.query_bias:
            fail("model.query_bias", f"a RelBitFit option (the relative term); it does nothing with {self.variant!r}")


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
        metadata={"help": "few-sample N: examples drawn with the seed after the dev split (0 = all)", "min": 0},
    )
    sample_seed: int = field(default=-1, metadata={"help": "seed of the dev and N-example draws (-1: the run seed)"})
    dev_size: int = field(
        default=500,
        metadata={
            "help": "dev examples carved from the training pool with the sample seed, disjoint from the N: they "
            "select the checkpoint; the task's evaluation set is reported as test (0: no dev split, select on it)",
            "min": 0,
        },
    )
    eval_test: bool = field(
        default=True,
        metadata={"help": "evaluate the test set at every evaluation (false: only the dev split while training)"},
    )
    max_eval: int = field(
        default=0, metadata={"help": "evaluate on the first K examples of each evaluation set (0 = all)", "min": 0}
    )
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
class RelBitFitTrainConfig(TrainConfig):
    """The shared training keys, with per-variant learning rate and epochs and a warm-up given as a fraction."""

    steps: int = field(
        default=0,
        metadata={"help": "optimizer steps: given (train.epochs left at -1), the budget is this step count", "min": 0},
    )
    lr: float = field(
        default=0.0,
        metadata={"help": "peak learning rate (0: the variant's, full 2e-5, bitfit/relbitfit 1e-3)", "min": 0},
    )
    epochs: float = field(
        default=-1.0,
        metadata={
            "help": "passes over the N training examples (-1: train.steps if given, else the variant's: full 10, "
            "bitfit/relbitfit 16; 0: train.steps)",
            "min": -1,
        },
    )
    warmup_ratio: float = field(
        default=0.1,
        metadata={"help": "linear warm-up over this fraction of the steps (sets train.warmup_steps if > 0)", "min": 0},
    )

    def validate(self) -> None:
        super().validate()
        if self.warmup_ratio >= 1:
            fail("train.warmup_ratio", f"a fraction of the steps in [0, 1), got {self.warmup_ratio}")
        if -1 < self.epochs < 0:
            fail("train.epochs", f"a number of passes >= 0, or -1 for the variant's default; got {self.epochs}")


@dataclass
class RelBitFitConfig(RunConfig):
    """Few-sample fine-tuning of a pretrained BERT/RoBERTa: RelBitFit, BitFit or full fine-tuning.

    Training defaults follow the BitFit recipe, with each variant's own learning rate and budget
    (:data:`VARIANT_DEFAULTS`): AdamW without weight decay, linear warm-up over 10 % of the steps then linear
    decay, batch 8, gradient clipping 1.0, max length 128, checkpoint selected on a dev split carved from the
    training pool.
    """

    method: str = "relbitfit"
    model: RelBitFitModelConfig = field(default_factory=RelBitFitModelConfig)
    data: TextTaskConfig = field(default_factory=TextTaskConfig)
    train: RelBitFitTrainConfig = field(
        default_factory=lambda: RelBitFitTrainConfig(
            batch_size=8,
            optimizer="adamw",
            weight_decay=0.0,
            scheduler="poly",
            poly_power=1.0,  # linear decay to 0
            max_grad_norm=1.0,
            checkpoint_every=500,
            log_every=20,
        )
    )

    def validate(self) -> None:
        """Fill in the variant's learning rate and budget where the config leaves them to it (0 and -1).

        A config that gives ``train.steps`` but no ``train.epochs`` trains for those steps.
        """
        lr, epochs = VARIANT_DEFAULTS[self.model.variant]
        if self.train.lr == 0:
            self.train.lr = lr
        if self.train.epochs == -1:
            self.train.epochs = 0.0 if self.train.steps > 0 else epochs
        if self.train.epochs == 0 and self.train.steps == 0:
            fail("train.steps", "train.epochs=0 trains for train.steps optimizer steps: give train.steps (>= 1)")
