"""A 2-layer BERT (hidden 32) saved as a Hugging Face model directory with the packaged MiniLM WordPiece tokenizer:
the small text model of the RelBitFit, export and usage tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def minilm_dir() -> Path:
    """The packaged MiniLM's directory; skips the test when the data extra is not installed."""
    from fewlabels.data.text import minilm_path

    try:
        return minilm_path()
    except Exception as err:  # the data extra is not installed
        pytest.skip(f"packaged MiniLM not available: {err}")


def save_tiny_bert(out: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT without a head (like a pretrained checkpoint; its pooler is in it) and the
    MiniLM tokenizer files, in ``out``."""
    from transformers import BertConfig, BertModel

    tokenizer_dir = minilm_dir()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    return out
