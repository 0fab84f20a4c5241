"""The pretrained backbone of a ``relbitfit`` run: where it lives, which variant patches it, how to load it.

Both the method (training, deltas, report figures) and the bias-change analysis use these helpers, so they live
here and neither of those modules imports the other for them. ``transformers`` is imported inside the functions:
registering the method must stay cheap for every CLI command, including those of other methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from fewlabels.config import ConfigError
from fewlabels.methods.relbitfit.config import RelBitFitConfig

if TYPE_CHECKING:
    from fewlabels.methods.relbitfit.variants import FineTuning

__all__ = ["fine_tuning_of", "load_base_model", "model_dir", "quiet_transformers"]


def model_dir(config: RelBitFitConfig) -> Path:
    """The pretrained model directory of ``config`` (the packaged MiniLM when ``model.path`` is empty)."""
    if config.model.path:
        path = Path(config.model.path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(
                "model.path",
                f"{path} is not a Hugging Face model directory (config.json, model.safetensors or "
                "pytorch_model.bin and the tokenizer files); download e.g. roberta-base there first",
            )
        return path
    from fewlabels.data.text import minilm_path

    return minilm_path()


def fine_tuning_of(config: RelBitFitConfig) -> FineTuning:
    """The :class:`FineTuning` a config asks for (N = ``data.max_length``)."""
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
        head=m.head,
        query_bias=m.query_bias,
    )


def quiet_transformers() -> None:
    """Silence transformers' load reports and progress bars (the new task head is expected to be missing)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_base_model(config: RelBitFitConfig) -> nn.Module:
    """The unmodified pretrained model of a run config (the head is irrelevant for bias changes)."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir(config)), local_files_only=True)
