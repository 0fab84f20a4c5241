"""``voc``: Pascal VOC 2012 segmentation, with the SBD "aug" labels (21 classes, 255 = ignore).

Split lists are ``ImageSets/Segmentation/<split>.txt`` files of bare ids, or of ``image mask`` path pairs as CCT
and UniMatch ship them (``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``). A run with ``data.labeled_list``
reads the labeled ids from such a file (CCT's ``1464_train_supervised.txt``) or from the VOC split it names
(``labeled_list: train`` is ``ImageSets/Segmentation/train.txt``, VOC's own 1,464 images: the paper's setting) and
the unlabeled ids from ``data.unlabeled_list`` (default: the rest of the training split); otherwise ``data.labeled``
images of the training split are drawn with ``data.split_seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from fewlabels.data.base import DataError, require_path
from fewlabels.data.common import (
    IMAGE_EXTENSIONS,
    CheckReport,
    check_sampled_masks,
    count_files,
    report_missing,
    require_files,
)
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.segmentation import (
    SegmentationData,
    SegmentationDataset,
    SegmentationOptions,
    Transform,
    labeled_unlabeled_subsets,
)

__all__ = [
    "VOC",
    "VOC_CLASS_NAMES",
    "VOC_LAYOUT",
    "ListEntry",
    "VOCSegmentation",
    "parse_list_entry",
    "read_split_list",
    "resolve_split_list",
    "voc_entry_paths",
    "voc_mask_dir",
]

VOC_CLASS_NAMES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

VOC_LAYOUT = """\
  <root>/                       e.g. VOCdevkit/VOC2012
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png      palette PNG, values 0..20 and 255 (border / ignore)
    SegmentationClassAug/<id>.png   optional SBD "aug" labels (grey PNG, same values)
    ImageSets/Segmentation/<split>.txt   one id per line, or per line a pair
                                         '/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png'"""


class ListEntry(NamedTuple):
    """One line of a split list: the image id and, when the line names them, the image and mask paths."""

    id: str
    image: str | None = None
    mask: str | None = None


def parse_list_entry(line: str) -> ListEntry | None:
    """Parse one split-list line: a bare id (``2007_000032``), a file name, or a pair of paths
    ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`` (CCT / UniMatch lists). Blank lines and
    ``#`` comments give None."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split()
    if len(parts) > 2:
        raise DataError(f"cannot parse split list line {line!r}: expected an id or 'image_path mask_path'")
    first = parts[0]
    has_path = "/" in first or Path(first).suffix.lower() in IMAGE_EXTENSIONS
    image = first.lstrip("/") if has_path else None
    mask = parts[1].lstrip("/") if len(parts) == 2 else None
    ident = Path(first).stem if has_path else first
    return ListEntry(ident, image, mask)


def read_split_list(path: str | Path) -> list[ListEntry]:
    """Read a split list file (one id or one ``image mask`` path pair per line); DataError if missing."""
    p = require_path(path, "split list file")
    entries = []
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            entry = parse_list_entry(line)
            if entry is not None:
                entries.append(entry)
    return entries


def voc_mask_dir(root: str | Path, split: str, use_aug_labels: bool | None = None) -> Path:
    """The VOC mask folder for ids whose list line names no mask.

    ``SegmentationClassAug/`` when ``use_aug_labels`` is True, or when it is None and the split name contains "aug"
    or ``SegmentationClass/`` is absent; ``SegmentationClass/`` otherwise.
    """
    root = Path(root)
    class_dir = root / "SegmentationClass"
    if use_aug_labels is None:
        use_aug_labels = "aug" in split.lower() or not class_dir.is_dir()
    return root / "SegmentationClassAug" if use_aug_labels else class_dir


def voc_entry_paths(
    root: str | Path, entry: ListEntry, mask_dir: Path, use_list_mask: bool = True
) -> tuple[Path, Path]:
    """Image and mask path of one split-list entry: the paths its line names (relative to ``root``), else
    ``JPEGImages/<id>.jpg`` and ``<mask_dir>/<id>.png``; ``use_list_mask=False`` ignores a named mask."""
    root = Path(root)
    image = root / entry.image if entry.image else root / "JPEGImages" / f"{entry.id}.jpg"
    mask = root / entry.mask if entry.mask and use_list_mask else mask_dir / f"{entry.id}.png"
    return image, mask


class VOCSegmentation(SegmentationDataset):
    """Pascal VOC 2012 segmentation (21 classes), with the SBD "aug" labels when asked or needed.

    Args:
        root: the ``VOC2012`` folder (holding ``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/``).
        split: name of ``ImageSets/Segmentation/<split>.txt`` (``train``, ``val``, ``trainaug``...).
        ids: overrides the split list: a list of ids (or list-file lines), or the path of a list file such as CCT's
            ``1464_train_supervised.txt`` whose lines are bare ids or
            ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` pairs. A ``str``/``Path`` is a file.
        labeled: False drops the masks (no mask file needed, no ``"mask"`` key): the unlabeled half of CCT.
        use_aug_labels: True reads every mask from ``SegmentationClassAug/``, False from ``SegmentationClass/``.
            None (default) follows the mask path of each list line when it names one, and otherwise uses
            ``SegmentationClassAug/`` for splits whose name contains "aug" (``trainaug``) or when ``SegmentationClass/``
            does not exist, ``SegmentationClass/`` else.
        transform: ``(image, mask, rng) -> (image, mask)``, applied only when ``sample`` gets an rng.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        ids: Sequence[str] | str | Path | None = None,
        labeled: bool = True,
        use_aug_labels: bool | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(labeled, transform)
        self.root = require_path(root, "VOC root folder", VOC_LAYOUT)
        self.split = split
        self.num_classes = len(VOC_CLASS_NAMES)
        self.class_names = list(VOC_CLASS_NAMES)
        require_path(self.root / "JPEGImages", "VOC image folder", VOC_LAYOUT)

        if ids is None:
            split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            require_path(split_file, f"VOC split list for split {split!r}", VOC_LAYOUT)
            entries = read_split_list(split_file)
            source = str(split_file)
        elif isinstance(ids, (str, Path)):
            entries = read_split_list(ids)
            source = str(ids)
        else:
            entries = [e for e in (parse_list_entry(str(x)) for x in ids) if e is not None]
            source = "the given ids"
        if not entries:
            raise DataError(f"VOC split is empty: no ids in {source}")

        mask_dir = voc_mask_dir(self.root, split, use_aug_labels)
        use_list_mask = use_aug_labels is None
        if labeled and (not use_list_mask or any(e.mask is None for e in entries)):
            require_path(mask_dir, "VOC mask folder", VOC_LAYOUT)
        self.use_aug_labels = use_aug_labels
        self.mask_dir = mask_dir
        for entry in entries:
            image, mask = voc_entry_paths(self.root, entry, mask_dir, use_list_mask)
            self.ids.append(entry.id)
            self.image_paths.append(str(image))
            self.mask_paths.append(str(mask) if labeled else None)
        require_files(self.image_paths, f"images listed in {source}", VOC_LAYOUT)
        if labeled:
            require_files([str(p) for p in self.mask_paths], f"masks for the ids in {source}", VOC_LAYOUT)


def resolve_split_list(root: str | Path, name: str) -> Path:
    """The split-list file that ``name`` names: an existing file path, else the VOC split of that name,
    ``<root>/ImageSets/Segmentation/<name>.txt`` (so ``train`` is VOC's own 1,464-image training list, the labeled
    set of the paper's main VOC setting). DataError naming both places when neither exists."""
    given = Path(name).expanduser()
    if given.is_file():
        return given
    split_dir = Path(root) / "ImageSets" / "Segmentation"
    stem = name[: -len(".txt")] if name.endswith(".txt") else name
    candidate = split_dir / f"{stem}.txt"
    if "/" not in name and "\\" not in name and candidate.is_file():
        return candidate
    raise DataError(
        f"split list {name!r} not found: it is neither a file nor a VOC split {candidate}; pass the path of a "
        f"list file (e.g. CCT's 1464_train_supervised.txt) or the name of a split in {split_dir}\n"
        f"Expected layout:\n{VOC_LAYOUT}"
    )


def build_voc(options: SegmentationOptions, transform: Transform) -> SegmentationData:
    """The labeled (listed, or drawn from the training split), unlabeled and validation sets of a VOC run.

    ``options.labeled_list`` / ``options.unlabeled_list`` are list files or names of VOC splits
    (:func:`resolve_split_list`): ``labeled_list: train`` with ``train_split: trainaug`` labels VOC's 1,464 ``train``
    images and leaves the rest of the 10,582 ``trainaug`` images unlabeled."""
    val = VOCSegmentation(options.root, split=options.val_split)
    if options.labeled_list:
        labeled = VOCSegmentation(
            options.root,
            split=options.train_split,
            ids=resolve_split_list(options.root, options.labeled_list),
            transform=transform,
        )
        unlabeled_ids = (
            [e.id for e in read_split_list(resolve_split_list(options.root, options.unlabeled_list))]
            if options.unlabeled_list
            else None
        )
        if unlabeled_ids is None:
            pool = VOCSegmentation(options.root, split=options.train_split, labeled=False)
            taken = set(labeled.ids)
            unlabeled_ids = [i for i in pool.ids if i not in taken]
        unlabeled = VOCSegmentation(
            options.root, split=options.train_split, ids=unlabeled_ids, labeled=False, transform=transform
        )
        return SegmentationData.from_metadata(labeled, unlabeled, val, VOC.metadata)
    full = VOCSegmentation(options.root, split=options.train_split, transform=transform)
    images = VOCSegmentation(options.root, split=options.train_split, labeled=False, transform=transform)
    lab, unl = labeled_unlabeled_subsets(full, images, options)
    return SegmentationData.from_metadata(lab, unl, val, VOC.metadata)


def check_voc(root: Path, report: CheckReport) -> None:
    """Check a VOC2012 folder: folders, counts, split ids with no image or mask, sampled mask values."""
    image_dir = root / "JPEGImages"
    class_dir = root / "SegmentationClass"
    aug_dir = root / "SegmentationClassAug"
    split_dir = root / "ImageSets" / "Segmentation"
    if image_dir.is_dir():
        report.counts["images"] = count_files(image_dir, "*.jpg")
    else:
        report.add_problem(f"image folder not found: {image_dir}\nExpected layout:\n{VOC_LAYOUT}")
    if class_dir.is_dir():
        report.counts["masks (SegmentationClass)"] = count_files(class_dir, "*.png")
    if aug_dir.is_dir():
        report.counts["masks (SegmentationClassAug)"] = count_files(aug_dir, "*.png")
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
        report_missing(report, f"images listed in {split_file.name}", missing_images, len(entries))
        report_missing(report, f"masks for the ids in {split_file.name}", missing_masks, len(entries))
    if not any(k.startswith("split ") for k in report.counts):
        report.add_problem(f"no split lists (*.txt) in {split_dir}")
    masks = sorted((image, mask) for mask, image in pairs.items())
    check_sampled_masks(report, masks, len(VOC_CLASS_NAMES))


VOC = register_dataset(
    DatasetSpec(
        name="voc",
        description="Pascal VOC 2012 segmentation (+ SBD SegmentationClassAug), split lists",
        check=check_voc,
        # Every class but the background is an object.
        metadata=DatasetMetadata(class_names=VOC_CLASS_NAMES, thing_classes=tuple(range(1, len(VOC_CLASS_NAMES)))),
        layout=VOC_LAYOUT,
        segmentation=build_voc,
    )
)
