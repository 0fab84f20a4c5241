"""The ``relbitfit`` method: few-sample fine-tuning of a pretrained BERT/RoBERTa sequence classifier.

One registered method covers the three variants (``model.variant`` = full | bitfit | relbitfit) so that they
share data, schedule and evaluation exactly; the variant only decides which parameters are trainable and
whether the self-attention is patched with relative tables (:mod:`.variants`, :mod:`.patch`).

Protocol: a dev split (``data.dev_size`` examples, seeded) is carved from the training pool before the N training
examples are drawn from the rest; the dev split selects the checkpoint (``score``), and the task's own evaluation
set is reported as ``test`` (metrics suffixed ``_test``). The run's weight files and checkpoints hold only what
the variant changes (:meth:`RelBitFitMethod.saved_state`: trainable tensors + the freshly initialised head), not
copies of the base model, which is rebuilt from ``model.path`` when a run is loaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewlabels.config import ConfigError
from fewlabels.data.glue import TextExample
from fewlabels.methods.base import ExportSpec, Method, Source, StepOutput
from fewlabels.methods.relbitfit.backbone import fine_tuning_of, load_base_model, model_dir, quiet_transformers
from fewlabels.methods.relbitfit.biases import bias_changes_per_layer
from fewlabels.methods.relbitfit.config import RelBitFitConfig
from fewlabels.methods.relbitfit.data import (
    TaskData,
    TokenizedTextDataset,
    dev_and_train_indices,
    load_task,
    position_limit,
    trim_batch,
)
from fewlabels.methods.relbitfit.predict import PredictionSettings, logits_of, predict_files
from fewlabels.registry import register_method

__all__ = ["RelBitFitMethod"]

#: name of the delta file written next to the run's weights
DELTA_FILE = "delta.safetensors"


def _primary_metric(metrics: dict[str, float], glue: str | None, regression: bool) -> float:
    if glue in ("cola",):
        return metrics["mcc"]
    if glue in ("mrpc", "qqp"):
        return metrics["f1"]
    if regression:
        return metrics["spearman"]
    return metrics["accuracy"]


@register_method
class RelBitFitMethod(Method[RelBitFitConfig]):
    """RelBitFit / BitFit / full fine-tuning of a pretrained BERT or RoBERTa on a few labelled sentences."""

    name = "relbitfit"
    description = "few-sample fine-tuning of BERT/RoBERTa: RelBitFit, BitFit or full (model.variant)"
    config_class = RelBitFitConfig
    metric = "score"
    metric_mode = "max"

    def __init__(self, config: RelBitFitConfig) -> None:
        super().__init__(config)
        self._task: TaskData | None = None
        self._tokenizer: Any = None
        self._eval_sets: dict[str, TokenizedTextDataset] = {}
        self._splits: tuple[list[int], list[int]] | None = None
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

    def split_indices(self) -> tuple[list[int], list[int]]:
        """``(dev, train)`` indices into the task's training pool (:func:`.data.dev_and_train_indices`)."""
        if self._splits is None:
            cfg = self.config.data
            seed = self.config.seed if cfg.sample_seed < 0 else cfg.sample_seed
            self._splits = dev_and_train_indices(len(self.task.train), cfg.dev_size, cfg.n_train, seed)
        return self._splits

    def train_sources(self) -> dict[str, Source]:
        """The N training examples; also turns ``train.warmup_ratio`` into ``train.warmup_steps`` for their size."""
        examples = [self.task.train[i] for i in self.split_indices()[1]]
        dataset = self._dataset(examples)
        train = self.config.train
        if train.warmup_ratio > 0:
            # The same count as the engine's: ceil(epochs x full batches per pass), or train.steps.
            per_pass = len(dataset) // train.batch_size
            steps = max(1, math.ceil(train.epochs * per_pass)) if train.epochs > 0 else train.steps
            train.warmup_steps = max(1, round(train.warmup_ratio * steps))
        return {"text": Source(dataset, train.batch_size)}

    def eval_sets(self, include_test: bool = True) -> dict[str, TokenizedTextDataset]:
        """Evaluation sets by name: ``dev`` (carved from the training pool) first, then the task's own sets as
        ``test`` (``test_mm`` for MNLI mismatched); without a dev split the task's sets under their own names.

        Args:
            include_test: with a dev split, also the test sets (``data.max_eval`` caps every set).
        """
        dev, _ = self.split_indices()
        k = self.config.data.max_eval
        if dev and "dev" not in self._eval_sets:
            self._eval_sets["dev"] = self._dataset([self.task.train[i] for i in (dev[:k] if k else dev)])
        if not dev or include_test:
            for i, (name, examples) in enumerate(self.task.evals.items()):
                key = name if not dev else ("test" if i == 0 else name.replace("dev", "test"))
                if key not in self._eval_sets:
                    self._eval_sets[key] = self._dataset(examples[:k] if k else examples)
        names = ["dev"] if dev else []
        if not dev or include_test:
            names += [n for n in self._eval_sets if n != "dev"]
        return {n: self._eval_sets[n] for n in names}

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
        from fewlabels.methods.relbitfit.variants import apply_fine_tuning

        model = apply_fine_tuning(model, fine_tuning_of(self.config))
        # Tensors that from_pretrained had to initialise (the head, sometimes the pooler) are not in the base
        # checkpoint: the delta must carry them even when they are frozen, or a restore would differ. (A pooler
        # that the cls/mean head removed is no longer there to carry.)
        present = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        self.extra_tensors = sorted(n for n in info.get("missing_keys", []) if n in present)
        return model

    # --- what a run stores ----------------------------------------------------------------------------------
    def saved_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The trainable tensors and the freshly initialised ones (the delta); the whole model for ``full``."""
        if self.config.model.variant == "full":
            return None
        from fewlabels.methods.relbitfit.delta import delta_tensors

        return delta_tensors(model, self.extra_tensors)

    def load_saved_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`saved_state` tensors into a model from :meth:`build_model` (the base weights elsewhere)."""
        if self.config.model.variant == "full":
            super().load_saved_state(model, state)
            return
        from fewlabels.methods.relbitfit.delta import load_tensors

        load_tensors(model, state, "the run's saved state")

    # --- training -------------------------------------------------------------------------------------------
    def training_step(
        self, model: nn.Module, batch: dict[str, dict[str, Any]], step: int, total_steps: int
    ) -> StepOutput:
        inputs = trim_batch(batch["text"])
        out = model(**inputs)
        return StepOutput(out.loss)

    # --- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(
        self, model: nn.Module, dataset: TokenizedTextDataset, device: torch.device, label: str = "eval"
    ) -> torch.Tensor:
        """Logits [n, num_labels] of every example of ``dataset`` (model in eval mode), in dataset order; the
        progress is shown on stderr as ``label``."""
        return logits_of(model, dataset.arrays, device, self.config.data.eval_batch_size, label)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        from fewlabels.metrics import accuracy, glue_metrics, pearson, spearman

        task = self.task
        metrics: dict[str, float] = {}
        for name, dataset in self.eval_sets(include_test=self.config.data.eval_test).items():
            logits = self.predict_logits(model, dataset, device, label=f"eval {name}")
            if task.glue_task is not None:
                glue = "mnli-mm" if name.endswith("_mm") else task.glue_task
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

    def prediction_settings(self) -> PredictionSettings:
        """How :meth:`predict` reads inputs and names labels (from the config; the data are not read)."""
        cfg = self.config.data
        names: tuple[str, ...] | None = None
        regression = cfg.regression
        if cfg.dataset == "rotten-tomatoes":
            from fewlabels.data.text import ROTTEN_TOMATOES_LABELS

            names = tuple(ROTTEN_TOMATOES_LABELS)
        elif cfg.dataset == "glue":
            from fewlabels.data.glue import glue_task

            spec = glue_task(cfg.task)
            names, regression = spec.labels, spec.is_regression
        elif cfg.label_names and not cfg.regression:
            names = tuple(cfg.label_names)
        return PredictionSettings(
            max_length=cfg.max_length,
            label_names=names,
            regression=regression,
            text_column=cfg.text_column,
            pair_column=cfg.pair_column or None,
            batch_size=cfg.eval_batch_size,
        )

    def predict(self, model: nn.Module, inputs: Sequence[Path], out_dir: Path, device: torch.device) -> list[Path]:
        """Label every example of ``.txt`` (one per line; a tab separates a pair), ``.csv``/``.tsv`` (header line,
        ``data.text_column`` [+ ``data.pair_column``]) or ``.jsonl`` files; writes ``<stem>.predictions.jsonl``
        with the label names (:mod:`.predict`)."""
        return predict_files(model, self.tokenizer, inputs, out_dir, device, self.prediction_settings())

    # --- artefacts ------------------------------------------------------------------------------------------
    def export_module(self, model: nn.Module) -> ExportSpec:
        """The classifier: ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for models with token types,
        BERT) ``int64 [N, L]`` -> ``logits [N, num_labels]``, N and L dynamic (L <= ``data.max_length``). The
        tokenizer is not part of the artefact: it is the base model's (``model.path``), truncating to ``max_length``.
        """
        from fewlabels.methods.relbitfit.predict import SequenceClassifierExport

        hf_model: Any = model  # a Hugging Face sequence classifier
        hf_config = hf_model.config
        token_types = int(getattr(hf_config, "type_vocab_size", 1) or 1) > 1
        vocab = int(hf_config.vocab_size)
        pad = int(getattr(hf_config, "pad_token_id", None) or 0)
        max_length = self.config.data.max_length
        device = next(iter(model.parameters())).device
        generator = torch.Generator().manual_seed(0)

        def texts(n: int, length: int) -> dict[str, torch.Tensor]:
            ids = torch.randint(min(3, vocab - 1), vocab, (n, length), generator=generator)
            mask = torch.ones(n, length, dtype=torch.long)
            if n > 1:  # a padded row: the mask must be in the graph, not dropped as all ones
                mask[-1, max(1, length * 2 // 3) :] = 0
                ids[-1][mask[-1] == 0] = pad
            out = {"input_ids": ids, "attention_mask": mask}
            if token_types:
                out["token_type_ids"] = torch.zeros(n, length, dtype=torch.long)
                out["token_type_ids"][:, length // 2 :] = 1  # a sentence pair
            return {k: v.to(device) for k, v in out.items()}

        length = max(2, min(max_length, 12))
        others = sorted({min(max_length, length + 5), max(2, length // 2)} - {length})
        names = ("input_ids", "attention_mask", "token_type_ids") if token_types else ("input_ids", "attention_mask")
        settings = self.prediction_settings()
        labels = 1 if settings.regression else int(hf_config.num_labels)

        def reference(*inputs: torch.Tensor) -> tuple[torch.Tensor]:
            return (model(**dict(zip(names, inputs))).logits,)

        tensors = ", ".join(names)
        return ExportSpec(
            module=SequenceClassifierExport(model, token_types).eval(),
            inputs=texts(2, length),
            outputs=("logits",),
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
            reference=reference,
            check_inputs=[texts(3 if i == 0 else 1, n) for i, n in enumerate(others)],
            description=(
                f"{self.name} ({self.config.model.variant}) classifier: {tensors} int64 [N, L] -> logits [N, {labels}]"
            ),
            metadata={
                "inputs": {n: f"int64 [N, L], L <= {max_length}" for n in names},
                "outputs": {"logits": f"float32 [N, {labels}]" + ("; a score" if settings.regression else "")},
                "variant": self.config.model.variant,
                "tokenizer": os.fspath(model_dir(self.config)),
                **settings.to_metadata(),
            },
        )

    def save_delta(self, model: nn.Module, run_dir: Path) -> Path:
        """Write ``run_dir/delta.safetensors``: the trainable tensors (+ randomly initialised frozen ones), with
        what prediction needs (label names, text columns, maximum length) in its metadata."""
        from fewlabels.methods.relbitfit.delta import save_delta

        meta: dict[str, Any] = {
            "task": self.config.data.task if self.config.data.dataset == "glue" else self.config.data.dataset
        }
        meta["base_model"] = os.fspath(model_dir(self.config))
        meta.update(self.prediction_settings().to_metadata())
        return save_delta(model, Path(run_dir) / DELTA_FILE, fine_tuning_of(self.config), self.extra_tensors, meta)

    def report_figures(self, model: nn.Module, out_dir: Path, device: torch.device) -> dict[str, Path]:
        """Per-layer mean |b_after - b_before| of this run against the pretrained weights."""
        from fewlabels.viz import plot_bias_changes

        base = load_base_model(self.config)
        changes = {fine_tuning_of(self.config).label: bias_changes_per_layer(base, model)}
        path = plot_bias_changes(changes, Path(out_dir) / "bias_changes.png", "bias change per layer")
        return {"bias change per layer": path}
