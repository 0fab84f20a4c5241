"""``fewshot-folder``: a user's own few-shot data, one folder of images per class plus a split file.

Layout: ``ROOT/<class>/<image>`` and a split file naming the classes of each split: ``ROOT/splits.json``
(``{"train": [...], "val": [...], "test": [...]}``; ``base`` / ``novel`` are accepted for train / test) or, with
``data.split_file``, a JSON file or a text file of ``<split> <class>`` lines. Its old name in few-shot configs,
``folder``, is still accepted there.

Evaluation-only folders (cross-domain test sets, a user's own novel classes): a split file that names only
``test`` classes, or no split file at all -- every class folder is then a test class. Such a folder has no
train or val split; ``fewshot-eval`` and ``data check`` need none.
"""

from __future__ import annotations

import json
from pathlib import Path

from fewlabels.data.base import DataError
from fewlabels.data.common import CheckReport
from fewlabels.data.fewshot import (
    IMAGE_SUFFIXES,
    SPLIT_ALIASES,
    SPLITS,
    FewShotDataset,
    FewShotOptions,
    FileFewShotDataset,
    check_fewshot_splits,
    layout_error,
    normalise_split,
)
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

__all__ = ["FEWSHOT_FOLDER_LAYOUT", "load_fewshot_folder", "read_split_file"]

FEWSHOT_FOLDER_LAYOUT = (
    "  ROOT/<class>/<image>.{jpg,png,...}\n"
    '  ROOT/splits.json   ({"train": [classes], "val": [classes], "test": [classes]}; only "test" for an\n'
    "                      evaluation-only folder; no splits.json = every class folder is a test class)"
)


def read_split_file(path: Path) -> dict[str, list[str]]:
    """Class names of each split from JSON (``{"train": [...], ...}``) or ``<split> <class>`` text lines."""
    if not path.is_file():
        raise layout_error("fewshot-folder", f"split file {path} not found", FEWSHOT_FOLDER_LAYOUT)
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
        if key not in SPLIT_ALIASES:
            raise DataError(f"{path}: unknown split {key!r}; use train/base, val, test/novel")
        splits[SPLIT_ALIASES[key]].extend(classes)
    return splits


def folder_splits(root: Path, split_file: str = "") -> dict[str, list[str]]:
    """The classes of each split: from the split file, or -- when none is given and ``ROOT/splits.json`` does not
    exist -- every class folder as a test class (an evaluation-only folder)."""
    path = Path(split_file) if split_file else root / "splits.json"
    if split_file or path.is_file():
        return read_split_file(path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {"train": [], "val": [], "test": classes}


def load_fewshot_folder(options: FewShotOptions, split: str) -> FewShotDataset:
    """The images of the classes that the split file assigns to ``split`` (84 pixels unless asked otherwise)."""
    root = Path(options.root).expanduser()
    split = normalise_split(split)
    if not root.is_dir():
        raise layout_error("fewshot-folder", f"folder {root} not found", FEWSHOT_FOLDER_LAYOUT)
    classes = folder_splits(root, options.split_file)[split]
    if not classes:
        raise DataError(
            f"the split file names no classes for split {split!r} (an evaluation-only folder -- no split file, or one "
            f"naming only test classes -- has test classes only)"
        )
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
    return FileFewShotDataset(paths, labels, options.image_size or 84, source=str(root))


def check_fewshot_folder(root: Path, report: CheckReport) -> None:
    """Count the images and classes of each split (from ``ROOT/splits.json``; none = every class is a test class)
    and flag classes too small for 5-shot episodes. A split without classes is not a problem when the folder
    has test classes (an evaluation-only folder)."""
    try:
        splits = folder_splits(root) if root.is_dir() else {}
    except DataError as e:
        report.add_problem(str(e))
        return
    present = [s for s in SPLITS if splits.get(s)]
    if splits and present == ["test"]:
        report.counts["train/val classes (evaluation-only folder)"] = 0
        check_fewshot_splits(load_fewshot_folder, root, report, splits=("test",))
        return
    check_fewshot_splits(load_fewshot_folder, root, report)


register_dataset(
    DatasetSpec(
        name="fewshot-folder",
        description="your few-shot data: class-per-folder images + splits.json",
        check=check_fewshot_folder,
        metadata=DatasetMetadata(ignore_index=None, image_size=84),
        layout=FEWSHOT_FOLDER_LAYOUT,
        few_shot=load_fewshot_folder,
        aliases=("folder",),
    )
)
