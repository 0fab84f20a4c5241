"""Backend of ``fewlabels data check KIND ROOT``: validate a dataset layout and count what is there.

Each dataset family registers a checker under a kind name::

    from fewlabels.data.check import CheckReport, register_checker

    @register_checker("mini-imagenet", "mini-ImageNet RFS pickles")
    def check_mini_imagenet(root: Path, report: CheckReport) -> None:
        report.counts["train images"] = ...
        report.add_problem(f"missing file: {root / 'x.pickle'}")

A checker fills the report it is given (so what it counted before failing is kept) and must not raise for an
ordinary layout problem; a ``DataError`` or ``OSError`` it does raise is recorded as one more problem. This
module imports only the standard library at import time, so that any reader module can register a checker
without cost; the readers themselves are imported when a check runs. :func:`check_dataset` also imports the
optional reader modules listed in :data:`PLUGIN_MODULES` so that their checkers are registered.

The segmentation kinds ``voc``, ``cityscapes`` and ``seg-folder`` are registered here.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

#: Modules of other dataset families that register checkers; :func:`check_dataset` imports those that exist.
PLUGIN_MODULES: tuple[str, ...] = (
    "fewlabels.data.fewshot",
    "fewlabels.data.glue",
    "fewlabels.data.unsupervised",
)

#: How many masks a checker decodes to look for out-of-range values (the full check would read every mask).
MASK_SAMPLES = 12

#: How many missing paths a problem message lists before summarising.
SHOWN_PATHS = 5


@dataclass
class CheckReport:
    """Outcome of checking one dataset: counts of what was found and a list of problems (``ok`` iff none)."""

    kind: str
    root: str
    ok: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add_problem(self, message: str) -> None:
        """Record a problem; the report is then not ok."""
        self.problems.append(message)
        self.ok = False

    def format(self) -> str:
        """Human-readable summary: a status line, one line per count, then the problems."""
        status = "OK" if self.ok and not self.problems else f"{len(self.problems)} problem(s)"
        lines = [f"{self.kind} dataset at {self.root}: {status}"]
        if self.counts:
            width = max(len(name) for name in self.counts)
            lines += [f"  {name:<{width}}  {value}" for name, value in self.counts.items()]
        if self.problems:
            lines.append("problems:")
            for problem in self.problems:
                first, *rest = problem.splitlines() or [""]
                lines.append(f"  - {first}")
                lines += [f"    {line}" for line in rest]
        return "\n".join(lines)


CheckerFunc = Callable[[Path, CheckReport], None]
_F = TypeVar("_F", bound=CheckerFunc)


@dataclass(frozen=True)
class Checker:
    """A registered checker: its kind name, a one-line description and the function."""

    kind: str
    description: str
    func: CheckerFunc

    def __call__(self, root: Path, report: CheckReport) -> None:
        self.func(root, report)


#: Registered checkers by kind name.
CHECKERS: dict[str, Checker] = {}


def register_checker(kind: str, description: str) -> Callable[[_F], _F]:
    """Decorator registering ``func(root: Path, report: CheckReport) -> None`` as the checker of ``kind``.

    Registering a second, different function under a taken kind is a ValueError (re-importing the same module
    is allowed).
    """
    if not kind or kind != kind.strip():
        raise ValueError(f"invalid dataset kind name {kind!r}")

    def decorate(func: _F) -> _F:
        existing = CHECKERS.get(kind)
        if existing is not None and _qualified(existing.func) != _qualified(func):
            raise ValueError(
                f"dataset kind {kind!r} is already registered by {_qualified(existing.func)}; "
                f"cannot register {_qualified(func)}"
            )
        CHECKERS[kind] = Checker(kind, description, func)
        return func

    return decorate


def _qualified(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def load_plugins() -> None:
    """Import the modules of :data:`PLUGIN_MODULES` that exist, so that their checkers register.

    Only a module that is itself missing is skipped; an import error inside an existing module propagates.
    """
    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not _is_module_or_parent(exc.name, name):
                raise


def _is_module_or_parent(missing: str, module: str) -> bool:
    return module == missing or module.startswith(missing + ".")


def available_kinds() -> list[str]:
    """Sorted kind names of every registered checker (plugins loaded first)."""
    load_plugins()
    return sorted(CHECKERS)


def describe_kinds() -> str:
    """One line per registered kind with its description (for ``--help`` and error messages)."""
    kinds = available_kinds()
    width = max((len(k) for k in kinds), default=0)
    return "\n".join(f"  {k:<{width}}  {CHECKERS[k].description}" for k in kinds)


def check_dataset(kind: str, root: str | Path) -> CheckReport:
    """Check the dataset of ``kind`` at ``root`` and return the report (never raises for layout problems).

    An unknown ``kind`` raises a DataError listing the known kinds with a "did you mean" suggestion.
    """
    from fewlabels.data.base import DataError

    kinds = available_kinds()
    if kind not in CHECKERS:
        close = difflib.get_close_matches(kind, kinds, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(f"unknown dataset kind {kind!r}.{hint} Known kinds:\n{describe_kinds()}")
    path = Path(root).expanduser()
    report = CheckReport(kind=kind, root=str(path))
    if not path.is_dir():
        report.add_problem(f"dataset root folder not found: {path}")
        return report
    try:
        CHECKERS[kind](path, report)
    except (DataError, OSError) as exc:
        report.add_problem(str(exc))
    if report.problems:
        report.ok = False
    return report


# ----------------------------------------------------------------------------------------------------------
# Helpers shared by the segmentation checkers


def _evenly_spaced(items: Sequence[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def _report_missing(report: CheckReport, what: str, paths: Sequence[str | Path], total: int) -> None:
    if not paths:
        return
    shown = "\n".join(str(p) for p in paths[:SHOWN_PATHS])
    more = f"\n... and {len(paths) - SHOWN_PATHS} more" if len(paths) > SHOWN_PATHS else ""
    report.add_problem(f"{len(paths)} of {total} {what} missing:\n{shown}{more}")


def _check_sampled_masks(
    report: CheckReport,
    pairs: Sequence[tuple[Path, Path]],
    num_classes: int | None,
    read: Callable[[Path], Any] | None = None,
) -> set[int]:
    """Decode a few (image, mask) pairs: report decode errors, size mismatches and out-of-range values.
    Returns the set of mask values seen."""
    import numpy as np
    from PIL import Image

    from fewlabels.data.base import DataError
    from fewlabels.data.segmentation import IGNORE_INDEX, check_mask_values, read_index_mask

    read = read or read_index_mask
    seen: set[int] = set()
    sampled = _evenly_spaced(pairs, MASK_SAMPLES)
    for image_path, mask_path in sampled:
        try:
            mask = read(mask_path)
            seen.update(int(v) for v in np.unique(mask))
            if num_classes is not None:
                check_mask_values(mask, num_classes, mask_path, IGNORE_INDEX)
            with Image.open(image_path) as img:
                width, height = img.size
            if (height, width) != mask.shape[:2]:
                report.add_problem(
                    f"image and mask sizes differ: {image_path} is {width}x{height}, {mask_path} is "
                    f"{mask.shape[1]}x{mask.shape[0]}"
                )
        except (DataError, OSError) as exc:
            report.add_problem(str(exc))
    report.counts["masks sampled"] = len(sampled)
    return seen


# ----------------------------------------------------------------------------------------------------------
# Segmentation checkers


def _count_files(folder: Path, pattern: str) -> int:
    return sum(1 for p in folder.glob(pattern) if p.is_file())


@register_checker("voc", "Pascal VOC 2012 segmentation (+ SBD SegmentationClassAug), split lists")
def check_voc(root: Path, report: CheckReport) -> None:
    """Check a VOC2012 folder: folders, counts, split ids with no image or mask, sampled mask values."""
    from fewlabels.data.segmentation import (
        VOC_CLASS_NAMES,
        VOC_LAYOUT,
        read_split_list,
        voc_entry_paths,
        voc_mask_dir,
    )

    image_dir = root / "JPEGImages"
    class_dir = root / "SegmentationClass"
    aug_dir = root / "SegmentationClassAug"
    split_dir = root / "ImageSets" / "Segmentation"
    if image_dir.is_dir():
        report.counts["images"] = _count_files(image_dir, "*.jpg")
    else:
        report.add_problem(f"image folder not found: {image_dir}\nExpected layout:\n{VOC_LAYOUT}")
    if class_dir.is_dir():
        report.counts["masks (SegmentationClass)"] = _count_files(class_dir, "*.png")
    if aug_dir.is_dir():
        report.counts["masks (SegmentationClassAug)"] = _count_files(aug_dir, "*.png")
    if not class_dir.is_dir() and not aug_dir.is_dir():
        report.add_problem(f"mask folder not found: {class_dir} (nor {aug_dir})")
    if not split_dir.is_dir():
        report.add_problem(f"split list folder not found: {split_dir}")
        return

    pairs: dict[Path, Path] = {}
    for split_file in sorted(split_dir.glob("*.txt")):
        split = split_file.stem
        entries = read_split_list(split_file)
        report.counts[f"split {split}"] = len(entries)
        if not entries:
            report.add_problem(f"split list is empty: {split_file}")
            continue
        # The VOC test release has no masks: its list is checked for images only.
        with_masks = "test" not in split.lower()
        mask_dir = voc_mask_dir(root, split)
        missing_images, missing_masks = [], []
        for entry in entries:
            image, mask = voc_entry_paths(root, entry, mask_dir)
            image_ok = image.is_file()
            if not image_ok:
                missing_images.append(image)
            if with_masks:
                if not mask.is_file():
                    missing_masks.append(mask)
                elif image_ok:
                    pairs.setdefault(mask, image)
        _report_missing(report, f"images listed in {split_file.name}", missing_images, len(entries))
        _report_missing(report, f"masks for the ids in {split_file.name}", missing_masks, len(entries))
    if not any(k.startswith("split ") for k in report.counts):
        report.add_problem(f"no split lists (*.txt) in {split_dir}")
    masks = sorted((image, mask) for mask, image in pairs.items())
    _check_sampled_masks(report, masks, len(VOC_CLASS_NAMES))


@register_checker("cityscapes", "Cityscapes leftImg8bit + gtFine (labelIds or labelTrainIds)")
def check_cityscapes(root: Path, report: CheckReport) -> None:
    """Check a Cityscapes folder: images per split, fine annotations for train/val, sampled mask values."""
    from fewlabels.data.segmentation import (
        CITYSCAPES_CLASS_NAMES,
        CITYSCAPES_LAYOUT,
        cityscapes_label_to_train_ids,
        find_cityscapes_images,
        read_index_mask,
    )

    image_root = root / "leftImg8bit"
    if not image_root.is_dir():
        report.add_problem(f"image folder not found: {image_root}\nExpected layout:\n{CITYSCAPES_LAYOUT}")
        return
    splits = sorted(p.name for p in image_root.iterdir() if p.is_dir())
    if not splits:
        report.add_problem(f"no split folders (train, val, ...) in {image_root}")
        return
    pairs: list[tuple[Path, Path]] = []
    for split in splits:
        images = find_cityscapes_images(root, split)
        report.counts[f"{split} images"] = len(images)
        if not images:
            report.add_problem(f"no *_leftImg8bit.png images under {image_root / split}")
            continue
        gt_dir = root / "gtFine" / split
        # Only train and val are expected to carry fine annotations (test's are placeholders, train_extra's
        # are coarse).
        if split not in ("train", "val"):
            continue
        if not gt_dir.is_dir():
            report.add_problem(f"annotation folder not found: {gt_dir}\nExpected layout:\n{CITYSCAPES_LAYOUT}")
            continue
        missing = []
        n_labels = 0
        for ident, image in images:
            base = gt_dir / ident
            train_ids = base.parent / f"{base.name}_gtFine_labelTrainIds.png"
            label_ids = base.parent / f"{base.name}_gtFine_labelIds.png"
            # Same rule as the reader: labelTrainIds used as is when present, else labelIds mapped.
            if train_ids.is_file():
                pairs.append((image, train_ids))
                n_labels += 1
            elif label_ids.is_file():
                pairs.append((image, label_ids))
                n_labels += 1
            else:
                missing.append(label_ids)
        report.counts[f"{split} annotations"] = n_labels
        _report_missing(report, f"{split} annotations (*_gtFine_labelIds.png)", missing, len(images))
    if pairs:

        def read_train_ids(path: Path) -> Any:
            mask = read_index_mask(path)
            return cityscapes_label_to_train_ids(mask) if path.name.endswith("_labelIds.png") else mask

        _check_sampled_masks(report, pairs, len(CITYSCAPES_CLASS_NAMES), read_train_ids)


@register_checker("seg-folder", "generic segmentation folder: images/ + masks/ (+ classes.txt, unlabeled/)")
def check_segmentation_folder(root: Path, report: CheckReport) -> None:
    """Check an ``images/`` + ``masks/`` folder: counts, masks without an image, sampled mask values."""
    from fewlabels.data.segmentation import FOLDER_LAYOUT, IGNORE_INDEX, list_images, read_class_names

    image_dir = root / "images"
    mask_dir = root / "masks"
    if not image_dir.is_dir():
        report.add_problem(f"image folder not found: {image_dir}\nExpected layout:\n{FOLDER_LAYOUT}")
        return
    images = list_images(image_dir)
    report.counts["images"] = len(images)
    if not images:
        report.add_problem(f"no images in {image_dir}")
    if (root / "unlabeled").is_dir():
        report.counts["unlabeled/ images"] = len(list_images(root / "unlabeled"))
    num_classes = None
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        num_classes = len(read_class_names(classes_file))
        report.counts["classes (classes.txt)"] = num_classes
        if num_classes == 0:
            report.add_problem(f"{classes_file} names no class")
            num_classes = None
    if not mask_dir.is_dir():
        report.add_problem(f"mask folder not found: {mask_dir} (no labeled images)\nExpected layout:\n{FOLDER_LAYOUT}")
        return
    masks = {p.stem: p for p in sorted(mask_dir.glob("*.png")) if not p.name.startswith(".")}
    report.counts["masks"] = len(masks)
    labeled = sorted(s for s in masks if s in images)
    report.counts["labeled images"] = len(labeled)
    report.counts["images without a mask"] = len(images) - len(labeled)
    orphans = [masks[s] for s in sorted(masks) if s not in images]
    _report_missing(report, "images for masks in masks/ (a mask needs images/<its name>.<ext>)", orphans, len(masks))
    if not labeled:
        report.add_problem(f"no image in {image_dir} has a mask {mask_dir}/<name>.png")
        return
    seen = _check_sampled_masks(report, [(images[s], masks[s]) for s in labeled], num_classes)
    valid = [v for v in seen if v != IGNORE_INDEX]
    if valid:
        report.counts["largest class id in sampled masks"] = max(valid)
    if num_classes is None and seen and seen <= {0, IGNORE_INDEX}:
        report.add_problem(
            "sampled masks hold only 0 and 255, but 255 is the ignore index: store a binary task's foreground as 1"
        )
