"""The few-shot classification family: what such a dataset gives a run, and the shared readers.

A dataset of this family registers a builder ``(options: FewShotOptions, split) -> FewShotDataset`` (see
:mod:`fewlabels.data.registry`). Splits are named ``train`` (base classes), ``val`` and ``test`` (novel classes);
``base`` and ``novel`` are accepted for train and test. The dataset's samples are
``{"image": float32 [3, S, S] in [0, 1], "label": int64, "index": int}`` and it exposes ``labels`` (int64 ``[N]``,
contiguous ``0..K-1`` within the split), ``num_classes`` and ``class_names`` for the episode samplers.

The datasets: ``mini-imagenet``, ``tiered-imagenet``, ``cifar-fs``, ``fc100``, ``fewshot-folder`` (one module
each), the embedded ``glyphs`` (``glyphs.py``) and the evaluation-only ``digits`` (``digits.py``, bundled
with scikit-learn).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fewlabels.data.base import DataError, FewDataset, to_chw_float
from fewlabels.data.common import CheckReport, read_rgb

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "SPLIT_ALIASES",
    "ArrayFewShotDataset",
    "FewShotDataset",
    "FewShotOptions",
    "FileFewShotDataset",
    "check_fewshot_splits",
    "data_and_labels",
    "layout_error",
    "load_cifar_style",
    "normalise_split",
    "read_pickle",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Accepted split names and the split each one is.
SPLIT_ALIASES = {"base": "train", "novel": "test", "train": "train", "val": "val", "test": "test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

#: Images per class that 5-way 5-shot episodes with 15 queries need; ``data check`` flags smaller classes.
EPISODE_IMAGES = 20


@dataclass(frozen=True)
class FewShotOptions:
    """What a few-shot run asks of its dataset (the ``data`` section of an SCL or ProtoNet config).

    Attributes:
        root: the dataset folder ('' for generated datasets).
        image_size: side of the square images (0 = the dataset's default, ``metadata.image_size``).
        split_file: folder datasets: the file naming each split's classes ('' = the dataset's default file).
        per_class, seed: images per class and generation seed of generated datasets.
    """

    root: str = ""
    image_size: int = 0
    split_file: str = ""
    per_class: int = 24
    seed: int = 0


def normalise_split(split: str) -> str:
    """``train``, ``val`` or ``test`` for a split name (``base`` and ``novel`` are train and test)."""
    if split not in SPLIT_ALIASES:
        raise DataError(f"unknown split {split!r}; use train (base), val or test (novel)")
    return SPLIT_ALIASES[split]


def _contiguous(labels: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Map arbitrary labels to ``0..K-1`` (sorted order); returns the new labels and the original of each class."""
    arr = np.asarray(labels)
    classes, inverse = np.unique(arr, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), classes.tolist()


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


class FewShotDataset(FewDataset):
    """A split of a few-shot dataset: images with one class label each.

    Attributes:
        labels: int64 ``[N]``, the label of every image, contiguous ``0..K-1``.
        num_classes: K. class_names: the name of each label.
    """

    labels: np.ndarray
    num_classes: int
    class_names: list[str]


class ArrayFewShotDataset(FewShotDataset):
    """Images held in memory as ``uint8 [N, H, W, 3]`` with per-image labels (remapped to ``0..K-1``)."""

    def __init__(
        self, images: np.ndarray, labels: Sequence[Any], image_size: int | None = None, source: str = ""
    ) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataError(f"{source}: expected images N x H x W x 3, got shape {images.shape}")
        if len(images) != len(labels):
            raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise DataError(f"{source}: the split is empty")
        self.images = images.astype(np.uint8, copy=False)
        self.labels, originals = _contiguous(labels)
        self.class_names = [str(c) for c in originals]
        self.num_classes = len(originals)
        self.image_size = int(image_size or images.shape[1])
        self.source = source

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        image = self.images[index]
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=2)
        return {
            "image": _resize(to_chw_float(image), self.image_size),
            "label": torch.tensor(int(self.labels[index])),
            "index": int(index),
        }


class FileFewShotDataset(FewShotDataset):
    """Image files decoded on access (RGB, resized to ``image_size``); labels remapped to ``0..K-1``."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[Any], image_size: int = 84, source: str = "") -> None:
        if len(paths) == 0:
            raise DataError(f"{source}: the split is empty (no images found)")
        self.paths = [Path(p) for p in paths]
        self.labels, originals = _contiguous(labels)
        self.class_names = [str(c) for c in originals]
        self.num_classes = len(originals)
        self.image_size = image_size
        self.source = source

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        path = self.paths[index]
        image = read_rgb(path)  # any mode, 16-bit scaled; a DataError naming the file when it does not decode
        return {
            "image": _resize(to_chw_float(image), self.image_size),
            "label": torch.tensor(int(self.labels[index])),
            "index": int(index),
        }


def read_pickle(path: Path) -> Any:
    """Unpickle ``path``; Python-2 pickles (RFS mini-ImageNet, tiered labels) are retried with latin-1."""
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)
    except UnicodeDecodeError:
        with path.open("rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"{path} is not a readable pickle ({e}); re-download it") from None


def data_and_labels(obj: Any, path: Path) -> tuple[np.ndarray, list[Any]]:
    """The ``data`` array and ``labels`` list of an unpickled dict (byte-string keys accepted)."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict with keys 'data' and 'labels', got {type(obj).__name__}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in ("data", "labels") if k not in obj]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; found {sorted(obj)}")
    return np.asarray(obj["data"]), list(np.asarray(obj["labels"]).reshape(-1))


def layout_error(name: str, what: str, layout: str) -> DataError:
    """A DataError saying what is missing from a ``name`` dataset, with its expected layout."""
    return DataError(f"{name}: {what}.\nExpected layout:\n{layout}")


def load_cifar_style(name: str, prefix: str, layout: str, options: FewShotOptions, split: str) -> FewShotDataset:
    """A split stored as ``ROOT/{split}.pickle`` or ``ROOT/{prefix}_{split}.pickle`` (dict ``data`` N x 32 x 32 x 3,
    ``labels``): the layout of CIFAR-FS and FC100; images default to 32 pixels."""
    root = Path(options.root).expanduser()
    split = normalise_split(split)
    candidates = [root / f"{split}.pickle", root / f"{prefix}_{split}.pickle"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise layout_error(name, " or ".join(str(p) for p in candidates) + " not found", layout)
    images, labels = data_and_labels(read_pickle(path), path)
    return ArrayFewShotDataset(images, labels, options.image_size or 32, source=str(path))


def check_fewshot_splits(
    build: Callable[[FewShotOptions, str], FewShotDataset],
    root: Path,
    report: CheckReport,
    split_file: str = "",
    splits: Sequence[str] = SPLITS,
) -> None:
    """Build each of ``splits`` of a few-shot dataset at ``root`` with ``build``: count its images and classes,
    and flag classes too small for 5-way 5-shot episodes with 15 queries."""
    for split in splits:
        try:
            ds = build(FewShotOptions(root=str(root), split_file=split_file), split)
        except DataError as e:
            report.add_problem(str(e))
            continue
        report.counts[f"{split} images"] = len(ds)
        report.counts[f"{split} classes"] = int(ds.num_classes)
        sizes = np.bincount(ds.labels)
        if sizes.min() < EPISODE_IMAGES:
            small = int(np.argmin(sizes))
            report.add_problem(
                f"{split}: class {ds.class_names[small]!r} has only {sizes.min()} images; "
                f"5-shot episodes with 15 queries need {EPISODE_IMAGES}"
            )
