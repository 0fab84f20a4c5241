"""Readers of the few-shot classification benchmarks, in their usual on-disk layouts.

Every reader returns a :class:`~fewlabels.data.base.FewDataset` whose samples are
``{"image": float32 [3, S, S] in [0, 1], "label": int64, "index": int}`` and which exposes ``labels`` (int64
``[N]``, contiguous ``0..K-1`` within the split), ``num_classes`` and ``class_names`` for episode samplers.
Splits are named ``train`` (base classes), ``val`` and ``test`` (novel classes).

Layouts (see :data:`LAYOUTS`):

- mini-ImageNet, RFS pickles ``miniImageNet_category_split_train_phase_train.pickle`` (train),
  ``miniImageNet_category_split_{val,test}.pickle``; each a dict with ``data`` uint8 ``N x 84 x 84 x 3`` and
  ``labels``. Older pickles were written by Python 2 and need ``encoding="latin1"``. Or Ravi & Larochelle's
  ``{train,val,test}.csv`` (``filename,label``) with the images in ``images/``.
- tiered-ImageNet: ``{split}_images.npz`` (key ``images``) and ``{split}_labels.pkl`` (key
``label_specific``).
- CIFAR-FS / FC100: ``{split}.pickle`` (or ``CIFAR_FS_{split}.pickle`` / ``FC100_{split}.pickle``) with
``data``
  ``N x 32 x 32 x 3`` and ``labels``.
- folder: ``ROOT/<class>/<image>`` and a split file (``ROOT/splits.json``: ``{"train": [...], "val": [...],
  "test": [...]}``; ``base``/``novel`` are accepted for train/test; or a text file of ``<split> <class>``
  lines).
"""

from __future__ import annotations

import csv
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fewlabels.data.base import DataError, FewDataset, to_chw_float

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_ALIASES = {"base": "train", "novel": "test", "train": "train", "val": "val", "test": "test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

MINI_PICKLES = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "train_phase_val": "miniImageNet_category_split_train_phase_val.pickle",
    "train_phase_test": "miniImageNet_category_split_train_phase_test.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
}

LAYOUTS: dict[str, str] = {
    "mini-imagenet": (
        "  ROOT/miniImageNet_category_split_train_phase_train.pickle   (RFS pickles: dict data, labels)\n"
        "  ROOT/miniImageNet_category_split_val.pickle\n"
        "  ROOT/miniImageNet_category_split_test.pickle\n"
        "or\n"
        "  ROOT/{train,val,test}.csv   (filename,label)\n"
        "  ROOT/images/<filename>"
    ),
    "tiered-imagenet": (
        "  ROOT/{train,val,test}_images.npz   (key images: N x 84 x 84 x 3 uint8)\n"
        "  ROOT/{train,val,test}_labels.pkl   (key label_specific)"
    ),
    "cifar-fs": ("  ROOT/{train,val,test}.pickle   (or CIFAR_FS_{split}.pickle; dict data N x 32 x 32 x 3, labels)"),
    "fc100": "  ROOT/{train,val,test}.pickle   (or FC100_{split}.pickle; dict data N x 32 x 32 x 3, labels)",
    "fewshot-folder": (
        "  ROOT/<class>/<image>.{jpg,png,...}\n"
        '  ROOT/splits.json   ({"train": [classes], "val": [classes], "test": [classes]})'
    ),
}


def normalise_split(split: str) -> str:
    if split in MINI_PICKLES:
        return split
    if split not in _SPLIT_ALIASES:
        raise DataError(f"unknown split {split!r}; use train (base), val or test (novel)")
    return _SPLIT_ALIASES[split]


def _contiguous(labels: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Map arbitrary labels to ``0..K-1`` (sorted order); returns the new labels and the original of each
    class."""
    arr = np.asarray(labels)
    classes, inverse = np.unique(arr, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), classes.tolist()


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


class ArrayFewShotDataset(FewDataset):
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


class FileFewShotDataset(FewDataset):
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
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot decode image {path}: {e}") from None
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


def _data_and_labels(obj: Any, path: Path) -> tuple[np.ndarray, list[Any]]:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict with keys 'data' and 'labels', got {type(obj).__name__}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in ("data", "labels") if k not in obj]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; found {sorted(obj)}")
    return np.asarray(obj["data"]), list(np.asarray(obj["labels"]).reshape(-1))


def _missing(kind: str, what: str) -> DataError:
    return DataError(f"{kind}: {what}.\nExpected layout:\n{LAYOUTS[kind]}")


def load_mini_imagenet(root: str | Path, split: str, image_size: int | None = None) -> FewDataset:
    """mini-ImageNet from RFS pickles (preferred) or the Ravi & Larochelle CSV + images layout."""
    root = Path(root).expanduser()
    split = normalise_split(split)
    pkl = root / MINI_PICKLES[split]
    if pkl.is_file():
        images, labels = _data_and_labels(read_pickle(pkl), pkl)
        return ArrayFewShotDataset(images, labels, image_size or 84, source=str(pkl))
    table = root / f"{split}.csv"
    if table.is_file():
        paths, labels = [], []
        with table.open(newline="") as fh:
            for row in csv.reader(fh):
                if not row or row[0].strip().lower() == "filename":
                    continue
                if len(row) < 2:
                    raise DataError(f"{table}: expected 'filename,label' rows, got {row}")
                paths.append(root / "images" / row[0].strip())
                labels.append(row[1].strip())
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise DataError(f"{table}: {len(absent)} listed image(s) missing, e.g. {absent[0]}")
        return FileFewShotDataset(paths, labels, image_size or 84, source=str(table))
    raise _missing("mini-imagenet", f"found neither {pkl.name} nor {table.name} in {root}")


def load_tiered_imagenet(root: str | Path, split: str, image_size: int | None = None) -> FewDataset:
    """tiered-ImageNet: ``{split}_images.npz`` + ``{split}_labels.pkl`` (fine labels ``label_specific``)."""
    root = Path(root).expanduser()
    split = normalise_split(split)
    img_path, lab_path = root / f"{split}_images.npz", root / f"{split}_labels.pkl"
    for p in (img_path, lab_path):
        if not p.is_file():
            raise _missing("tiered-imagenet", f"{p} not found")
    with np.load(img_path) as npz:
        if "images" not in npz.files:
            raise DataError(f"{img_path}: missing key 'images'; found {npz.files}")
        images = npz["images"]
    meta = read_pickle(lab_path)
    if isinstance(meta, dict):
        meta = {k.decode() if isinstance(k, bytes) else k: v for k, v in meta.items()}
    if not isinstance(meta, dict) or "label_specific" not in meta:
        raise DataError(f"{lab_path}: expected a dict with key 'label_specific'")
    labels = list(np.asarray(meta["label_specific"]).reshape(-1))
    return ArrayFewShotDataset(images, labels, image_size or 84, source=str(img_path))


def load_cifar_fewshot(kind: str, root: str | Path, split: str, image_size: int | None = None) -> FewDataset:
    """CIFAR-FS (``kind="cifar-fs"``) or FC100 (``kind="fc100"``) pickles."""
    root = Path(root).expanduser()
    split = normalise_split(split)
    prefix = {"cifar-fs": "CIFAR_FS", "fc100": "FC100"}[kind]
    candidates = [root / f"{split}.pickle", root / f"{prefix}_{split}.pickle"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise _missing(kind, " or ".join(str(p) for p in candidates) + " not found")
    images, labels = _data_and_labels(read_pickle(path), path)
    return ArrayFewShotDataset(images, labels, image_size or 32, source=str(path))


def read_split_file(path: Path) -> dict[str, list[str]]:
    """Class names of each split from JSON (``{"train": [...], ...}``) or ``<split> <class>`` text lines."""
    if not path.is_file():
        raise _missing("fewshot-folder", f"split file {path} not found")
    text = path.read_text()
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected an object mapping train/val/test to class lists")
        items = [(str(k), [str(c) for c in v]) for k, v in data.items()]
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"{path}:{n}: expected '<split> <class>', got {line!r}")
            items.append((parts[0], [parts[1].strip()]))
    for key, classes in items:
        if key not in _SPLIT_ALIASES:
            raise DataError(f"{path}: unknown split {key!r}; use train/base, val, test/novel")
        splits[_SPLIT_ALIASES[key]].extend(classes)
    return splits


def load_fewshot_folder(root: str | Path, split: str, image_size: int = 84, split_file: str | Path = "") -> FewDataset:
    """A class-per-folder image tree restricted to the classes that the split file assigns to ``split``."""
    root = Path(root).expanduser()
    split = normalise_split(split)
    if not root.is_dir():
        raise _missing("fewshot-folder", f"folder {root} not found")
    classes = read_split_file(Path(split_file) if split_file else root / "splits.json")[split]
    if not classes:
        raise DataError(f"the split file names no classes for split {split!r}")
    paths, labels = [], []
    for name in classes:
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"class folder {folder} (named by the split file for {split!r}) does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += files
        labels += [name] * len(files)
    return FileFewShotDataset(paths, labels, image_size, source=str(root))


def load_fewshot(
    kind: str, root: str | Path, split: str, image_size: int | None = None, split_file: str | Path = ""
) -> FewDataset:
    """Dispatch on ``kind``: mini-imagenet, tiered-imagenet, cifar-fs, fc100, folder (or fewshot-folder)."""
    if kind == "mini-imagenet":
        return load_mini_imagenet(root, split, image_size)
    if kind == "tiered-imagenet":
        return load_tiered_imagenet(root, split, image_size)
    if kind in ("cifar-fs", "fc100"):
        return load_cifar_fewshot(kind, root, split, image_size)
    if kind in ("folder", "fewshot-folder"):
        return load_fewshot_folder(root, split, image_size or 84, split_file)
    raise DataError(
        f"unknown few-shot dataset {kind!r}; choose mini-imagenet, tiered-imagenet, cifar-fs, fc100, folder"
    )


def _check_splits(kind: str, root: Path, report: Any) -> None:
    for split in SPLITS:
        try:
            ds = load_fewshot(kind, root, split)
        except DataError as e:
            report.add_problem(str(e))
            continue
        report.counts[f"{split} images"] = len(ds)
        report.counts[f"{split} classes"] = int(ds.num_classes)  # type: ignore[attr-defined]
        sizes = np.bincount(ds.labels)  # type: ignore[attr-defined]
        if sizes.min() < 20:
            small = int(np.argmin(sizes))
            report.add_problem(
                f"{split}: class {ds.class_names[small]!r} has only {sizes.min()} images; "  # type: ignore[attr-defined]
                "5-shot episodes with 15 queries need 20"
            )


def _register_checkers() -> None:
    try:
        from fewlabels.data.check import register_checker
    except ImportError:  # pragma: no cover - the check backend is optional at import time
        return
    descriptions = {
        "mini-imagenet": "mini-ImageNet (RFS pickles or CSV + images)",
        "tiered-imagenet": "tiered-ImageNet ({split}_images.npz + {split}_labels.pkl)",
        "cifar-fs": "CIFAR-FS ({split}.pickle)",
        "fc100": "FC100 ({split}.pickle)",
        "fewshot-folder": "class-per-folder images + splits.json (few-shot)",
    }
    for kind, description in descriptions.items():

        def checker(root: Path, report: Any, kind: str = kind) -> None:
            _check_splits(kind, Path(root), report)

        checker.__qualname__ = f"check_{kind.replace('-', '_')}"
        register_checker(kind, description)(checker)


_register_checkers()
