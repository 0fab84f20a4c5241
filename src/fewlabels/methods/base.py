"""The contract between a method and the training engine.

A method is a recipe: which model to build, which training sources to draw batches from, how one training step
turns batches into a loss, how to evaluate and predict. The engine (``fewlabels.engine``) owns everything else:
devices, distribution, mixed precision, accumulation, checkpoints, resume, logging, the NaN guard.

Distributed rule: ``training_step`` receives the *wrapped* model (DDP under torchrun) and must only call its
``forward``; a method whose step needs several sub-networks puts that logic in the module's forward (e.g.
``model(images, mode="train")``), so gradients are synchronised correctly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from fewlabels.config import RunConfig
from fewlabels.data.base import FewDataset


@dataclass
class Source:
    """A training data source: a dataset and the global number of examples it contributes per micro-step."""

    dataset: FewDataset
    batch_size: int


@dataclass
class StepOutput:
    """What a training step returns: the scalar loss to back-propagate and extra scalars to log."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass
class ExportSpec:
    """What ``fewlabels export`` writes for a trained model: a module with a plain tensor-in, tensor-out forward.

    Attributes:
        module: in eval mode; ``module(*inputs.values())`` returns one tensor or a tuple of them, in
            ``outputs`` order, from tensors only (no dict, no mode argument), so that ``torch.jit.trace`` and
            ``torch.export`` record it.
        inputs: an example of each input of ``module.forward``, in the order of its parameters (whose names are
            these keys).
        outputs: the names of the outputs.
        dynamic_axes: for inputs and outputs, ``{axis: dimension name}`` of the axes that may change size (batch,
            height, width, sequence); the other axes are fixed.
        reference: the run's own predictor on the same inputs (a tuple in ``outputs`` order): what the exported
            artefact is compared with.
        check_inputs: further inputs with other sizes on every dynamic axis (the check runs them as well).
        description: what is exported, in a few words (``images [N, 3, H, W] in [0, 1] -> logits [N, 21, H, W]``).
        metadata: JSON-serialisable facts a user of the artefact needs (classes, input size, normalisation, ...).
    """

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    reference: Callable[..., tuple[torch.Tensor, ...]]
    check_inputs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


#: the config class of a method: ``Method[C]`` has ``self.config: C``
C = TypeVar("C", bound=RunConfig)


class Method(Generic[C]):
    """Base class of every method. Subclasses set the class attributes and implement the hooks.

    A method is generic in its config class: ``class MyMethod(Method[MyConfig])`` types ``self.config`` as
    ``MyConfig`` (set ``config_class = MyConfig`` too; the registry builds the config from it).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[RunConfig]] = RunConfig
    #: validation metric used to select the best checkpoint, and whether higher is better
    metric: ClassVar[str] = "loss"
    metric_mode: ClassVar[str] = "max"
    #: DDP option for models whose forward leaves some parameters unused in a step
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config: C) -> None:
        self.config: C = config

    # --- model and data -------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    def train_sources(self) -> dict[str, Source]:
        """Named training sources; each micro-step draws one batch from every source."""
        raise NotImplementedError(f"{type(self).__name__}.train_sources")

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer parameter groups (default: every trainable parameter at the base lr).

        A group may carry ``lr_scale`` (multiplied with ``train.lr``), e.g. 0.1 for a pretrained backbone.
        """
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    # --- training -------------------------------------------------------------------------------------------
    def training_step(
        self, model: nn.Module, batch: dict[str, dict[str, Any]], step: int, total_steps: int
    ) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__}.training_step")

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Hook after each optimizer step (unwrapped model), e.g. to re-project weights."""

    # --- what a run stores ----------------------------------------------------------------------------------
    def saved_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The tensors that the run's weight files and checkpoints store, or None for the whole model (default).

        A method that changes a few tensors of a pretrained model (e.g. BitFit) returns just those: the rest is
        rebuilt by :meth:`build_model`, so a run directory does not hold copies of the base model.
        """
        return None

    def load_saved_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`saved_state` stored into a model fresh from :meth:`build_model` (default: the whole
        state dict, strictly)."""
        model.load_state_dict(state)

    # --- evaluation and inference ---------------------------------------------------------------------------
    def prepare_inference(self, run_dir: Path, weights: Path) -> None:
        """Called by ``load_run`` before :meth:`build_model` for a trained run whose ``weights`` are about to be
        loaded: a method may take what building the model needs (e.g. its classes) from the run instead of reading
        the training data, so that predicting needs no data (default: nothing)."""

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Metrics on the validation split (unwrapped model in eval mode). Must contain ``self.metric``."""
        return {}

    def predict(self, model: nn.Module, inputs: Sequence[Path], out_dir: Path, device: torch.device) -> list[Path]:
        """Write predictions for ``inputs`` into ``out_dir`` and return the written files."""
        raise NotImplementedError(f"{self.name}: predict is not available for this method")

    def report_figures(self, model: nn.Module, out_dir: Path, device: torch.device) -> dict[str, Path]:
        """Qualitative figures for ``fewlabels report`` (title -> PNG path)."""
        return {}

    # --- export ---------------------------------------------------------------------------------------------
    def export_module(self, model: nn.Module) -> ExportSpec:
        """The trained ``model`` (unwrapped, eval mode) as a module with a tensor-in, tensor-out forward, its example
        inputs and its reference predictor, for ``fewlabels export`` (ONNX, TorchScript, safetensors). The module may
        share parameters with ``model`` but must not change it."""
        raise NotImplementedError(f"{self.name}: export is not available for this method")

    @classmethod
    def exports(cls) -> bool:
        """Whether the method implements :meth:`export_module` (``fewlabels export`` refuses the others early)."""
        return cls.export_module is not Method.export_module
