"""The ``relbitfit`` method: few-sample fine-tuning of a pretrained BERT/RoBERTa sequence classifier.

One registered method covers the three variants (``model.variant`` = full | bitfit | relbitfit) so that they
share data, schedule and evaluation exactly; the variant only decides which parameters are trainable and
whether the self-attention is patched with relative tables (:mod:`.variants`, :mod:`.patch`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fewlabels.config import ConfigError
from fewlabels.data.base import DataError
from fewlabels.data.glue import TextExample
from fewlabels.methods.base import Method, Source, StepOutput
from fewlabels.methods.relbitfit.config import RelBitFitConfig
from fewlabels.methods.relbitfit.data import (
    TaskData,
    TokenizedTextDataset,
    few_sample_indices,
    load_task,
    position_limit,
    trim_batch,
)
from fewlabels.registry import register_method

if TYPE_CHECKING:
    from fewlabels.methods.relbitfit.variants import FineTuning

__all__ = ["RelBitFitMethod", "fine_tuning_of", "model_dir"]

#: name of the delta file written next to the run's weights
DELTA_FILE = "delta.safetensors"


def model_dir(config: RelBitFitConfig) -> Path:
    """The pretrained model directory of ``config`` (the packaged MiniLM when ``model.path`` is empty)."""
    if config.model.path:
        path = Path(config.model.path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(
                "model.path",
                f"{path} is not a Hugging Face model directory (config.json, model.safetensors or "
                "pytorch_model.bin "
                "and the tokenizer files); download e.g. roberta-base there first",
            )
        return path
    from fewlabels.data.text import minilm_path

    return minilm_path()


def fine_tuning_of(config: RelBitFitConfig) -> FineTuning:
    """The :class:`FineTuning` a config asks for (N = ``data.max_length``)."""
    # transformers is imported here, not at module level: registering the method must stay cheap for every CLI
    # command, including those of other methods.
    from fewlabels.methods.relbitfit.variants import FineTuning

    m = config.model
    return FineTuning(
        variant=m.variant,
        num_positions=config.data.max_length,
        relative_index=m.relative_index,
        pt=m.pt,
        lr=m.lr,
        clip=m.clip,
        rank=m.rank,
        l_max=m.l_max,
    )


def _primary_metric(metrics: dict[str, float], glue: str | None, regression: bool) -> float:
    if glue in ("cola",):
        return metrics["mcc"]
    if glue in ("mrpc", "qqp"):
        return metrics["f1"]
    if regression:
        return metrics["spearman"]
    return metrics["accuracy"]


def quiet_transformers() -> None:
    """Silence transformers' load reports and progress bars (the new task head is expected to be missing)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@register_method
class RelBitFitMethod(Method):
    """RelBitFit / BitFit / full fine-tuning of a pretrained BERT or RoBERTa on a few labelled sentences."""

    name = "relbitfit"
    description = "few-sample fine-tuning of BERT/RoBERTa: RelBitFit, BitFit or full (model.variant)"
    config_class = RelBitFitConfig
    metric = "score"
    metric_mode = "max"

    def __init__(self, config: RelBitFitConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.config: RelBitFitConfig = config
        self._task: TaskData | None = None
        self._tokenizer: Any = None
        self._eval_sets: dict[str, TokenizedTextDataset] = {}
        self.extra_tensors: list[str] = []

    # --- data -----------------------------------------------------------------------------------------------
    @property
    def task(self) -> TaskData:
        if self._task is None:
            self._task = load_task(self.config.data)
        return self._task

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir(self.config)), local_files_only=True)
        return self._tokenizer

    def _dataset(self, examples: Sequence[TextExample]) -> TokenizedTextDataset:
        return TokenizedTextDataset(examples, self.tokenizer, self.config.data.max_length, self.task.regression)

    def train_sources(self) -> dict[str, Source]:
        cfg = self.config.data
        seed = self.config.seed if cfg.sample_seed < 0 else cfg.sample_seed
        chosen = few_sample_indices(len(self.task.train), cfg.n_train, seed)
        examples = [self.task.train[i] for i in chosen]
        return {"text": Source(self._dataset(examples), self.config.train.batch_size)}

    def eval_sets(self) -> dict[str, TokenizedTextDataset]:
        if not self._eval_sets:
            k = self.config.data.max_eval
            for name, examples in self.task.evals.items():
                self._eval_sets[name] = self._dataset(examples[:k] if k else examples)
        return self._eval_sets

    # --- model ----------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        quiet_transformers()

        path = model_dir(self.config)
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        limit = position_limit(hf_config)
        if self.config.data.max_length > limit:
            raise ConfigError(
                "data.max_length",
                f"{self.config.data.max_length} tokens exceed what {path.name} supports ({limit} positions)",
            )
        task = self.task
        overrides: dict[str, Any] = {}
        if self.config.model.dropout >= 0:
            rate = self.config.model.dropout
            overrides = {"hidden_dropout_prob": rate, "attention_probs_dropout_prob": rate, "classifier_dropout": rate}
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path),
            num_labels=task.num_labels,
            problem_type="regression" if task.regression else "single_label_classification",
            attn_implementation=self.config.model.attn_implementation,
            local_files_only=True,
            output_loading_info=True,
            **overrides,
        )
        # Tensors that from_pretrained had to initialise (the head, sometimes the pooler) are not in the base
        # checkpoint: the delta must carry them even when they are frozen, or a restore would differ.
        self.extra_tensors = sorted(info.get("missing_keys", []))
        from fewlabels.methods.relbitfit.variants import apply_fine_tuning

        return apply_fine_tuning(model, fine_tuning_of(self.config))

    # --- training -------------------------------------------------------------------------------------------
    def training_step(
        self, model: nn.Module, batch: dict[str, dict[str, Any]], step: int, total_steps: int
    ) -> StepOutput:
        inputs = trim_batch(batch["text"])
        out = model(**inputs)
        return StepOutput(out.loss)

    # --- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, model: nn.Module, dataset: TokenizedTextDataset, device: torch.device) -> torch.Tensor:
        """Logits [n, num_labels] of every example of ``dataset`` (model in eval mode)."""
        size = self.config.data.eval_batch_size
        outputs = []
        for start in range(0, len(dataset), size):
            batch = {k: v[start : start + size].to(device) for k, v in dataset.arrays.items()}
            outputs.append(model(**trim_batch(batch)).logits.float().cpu())
        return torch.cat(outputs)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        from fewlabels.metrics import accuracy, glue_metrics, pearson, spearman

        task = self.task
        metrics: dict[str, float] = {}
        for name, dataset in self.eval_sets().items():
            logits = self.predict_logits(model, dataset, device)
            if task.glue_task is not None:
                glue = "mnli-mm" if name == "dev_mm" else task.glue_task
                values = glue_metrics(glue, logits, dataset.labels)
            elif task.regression:
                values = {
                    "pearson": pearson(logits[:, 0], dataset.labels),
                    "spearman": spearman(logits[:, 0], dataset.labels),
                }
            else:
                values = {"accuracy": accuracy(logits.argmax(-1), dataset.labels)}
            if not metrics:
                metrics.update(values)
                metrics["score"] = _primary_metric(values, task.glue_task, task.regression)
            else:
                metrics.update({f"{k}_{name}": v for k, v in values.items()})
        return metrics

    def predict(self, model: nn.Module, inputs: Sequence[Path], out_dir: Path, device: torch.device) -> list[Path]:
        """Label every line of text files: ``.txt`` (one example per line, a tab separates a sentence pair) or
        ``.jsonl`` (objects with ``text`` and optional ``text_pair``). Writes ``<stem>.predictions.jsonl``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in inputs:
            examples = _read_unlabelled(path)
            logits = self.predict_logits(model, self._dataset(examples), device)
            target = out_dir / f"{path.stem}.predictions.jsonl"
            with target.open("w") as fh:
                for example, row in zip(examples, logits):
                    record: dict[str, Any] = {"text": example.text}
                    if example.text_pair is not None:
                        record["text_pair"] = example.text_pair
                    if self.task.regression:
                        record["score"] = float(row[0])
                    else:
                        record["label"] = int(row.argmax())
                        record["probabilities"] = [round(float(p), 6) for p in row.softmax(-1)]
                    fh.write(json.dumps(record) + "\n")
            written.append(target)
        return written

    # --- artefacts ------------------------------------------------------------------------------------------
    def save_delta(self, model: nn.Module, run_dir: Path) -> Path:
        """Write ``run_dir/delta.safetensors``: the trainable tensors (+ randomly initialised frozen ones)."""
        from fewlabels.methods.relbitfit.delta import save_delta

        meta = {"task": self.config.data.task if self.config.data.dataset == "glue" else self.config.data.dataset}
        meta["base_model"] = os.fspath(model_dir(self.config))
        return save_delta(model, Path(run_dir) / DELTA_FILE, fine_tuning_of(self.config), self.extra_tensors, meta)

    def report_figures(self, model: nn.Module, out_dir: Path, device: torch.device) -> dict[str, Path]:
        """Per-layer mean |b_after - b_before| of this run against the pretrained weights."""
        from fewlabels.methods.relbitfit.biases import bias_changes_per_layer, load_base_model
        from fewlabels.viz import plot_bias_changes

        base = load_base_model(self.config)
        changes = {fine_tuning_of(self.config).label: bias_changes_per_layer(base, model)}
        path = plot_bias_changes(changes, Path(out_dir) / "bias_changes.png", "bias change per layer")
        return {"bias change per layer": path}


def _read_unlabelled(path: Path) -> list[TextExample]:
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    examples = []
    with path.open(encoding="utf-8") as fh:
        for line, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if path.suffix.lower() == ".jsonl":
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}, line {line}: invalid JSON ({err.msg})") from None
                if not isinstance(record, dict) or "text" not in record:
                    raise DataError(f"{path}, line {line}: expected an object with a 'text' key")
                examples.append(TextExample(str(record["text"]), record.get("text_pair"), 0))
            else:
                text, _, pair = raw.rstrip("\n").partition("\t")
                examples.append(TextExample(text, pair or None, 0))
    if not examples:
        raise DataError(f"{path} holds no text")
    if len({e.text_pair is None for e in examples}) > 1:
        raise DataError(f"{path}: mix of single sentences and sentence pairs; use one kind per file")
    return examples
