"""``seg-folder``: a user's own segmentation data, ``images/`` + ``masks/`` with the same stems.

Some images may have no mask at all: they are the unlabeled images of semi-supervised training (the reference CCT
required a label for every image: its issue #14). An optional ``val/`` folder in the same layout is the validation
split (else the labeled images are used). Its old name in configs, ``folder``, is still accepted there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fewlabels.data.base import DataError, FewDataset, Subset, require_path
from fewlabels.data.common import (
    IGNORE_INDEX,
    SHOWN_PATHS,
    CheckReport,
    check_classes_file,
    check_image_dir,
    check_images_decode,
    check_mask_extensions,
    check_sampled_masks,
    list_images,
    read_class_names,
    read_index_mask,
    report_missing,
)
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.segmentation import SegmentationData, SegmentationDataset, SegmentationOptions, Transform
from fewlabels.data.splits import labeled_unlabeled_split, read_id_list

__all__ = ["FOLDER_LAYOUT", "SEG_FOLDER", "FolderSegmentation", "folder_metadata", "infer_num_classes"]

FOLDER_LAYOUT = """\
  <root>/
    images/<name>.<jpg|png|...>     every image (with or without a mask)
    masks/<name>.png                class index per pixel (0..num_classes-1, 255 = ignore), image's stem
    classes.txt                     optional, one class name per line (defines num_classes); the class
                                    named "background" is the background (default: class 0)
    unlabeled/<name>.<jpg|png|...>  optional extra images without masks (used only with labeled=False)
    val/images, val/masks           optional validation split (else the labeled images)"""


def infer_num_classes(mask_paths: Sequence[str]) -> int:
    """One more than the largest class index in the masks (255 excluded); fewer than two classes is an error."""
    top = -1
    values: set[int] = set()
    for path in mask_paths:
        mask = read_index_mask(path)
        present = np.unique(mask)
        values.update(int(v) for v in present)
        valid = present[present != IGNORE_INDEX]
        if valid.size:
            top = max(top, int(valid.max()))
    if top < 1:
        hint = ""
        if values <= {0, IGNORE_INDEX}:
            hint = (
                " The masks hold only 0 and 255, but 255 is the ignore index: for a binary task store the"
                " foreground as 1."
            )
        raise DataError(
            f"cannot infer the number of classes: the masks hold fewer than two classes.{hint} "
            "Pass num_classes or write classes.txt."
        )
    return top + 1


class FolderSegmentation(SegmentationDataset):
    """A user's own folder: ``images/`` + ``masks/`` with the same stems, optional ``classes.txt``.

    Images without a mask are allowed. ``labeled=True`` uses only the images that have a mask (sorted by name);
    ``labeled=False`` uses every image in ``images/`` (with or without a mask) plus every image in the optional
    ``unlabeled/`` folder, whose ids are prefixed ``unlabeled/``; no mask is read.

    The number of classes comes from ``num_classes``, else from ``classes.txt``, else (for a folder with masks)
    from the largest mask value other than 255 -- which reads every mask once; pass ``num_classes`` to skip that. An
    unlabeled folder with neither gets ``num_classes = None``. Mask values ``>= num_classes`` other than 255 raise a
    DataError naming the file when the sample is read.
    """

    def __init__(
        self,
        root: str | Path,
        labeled: bool = True,
        transform: Transform | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(labeled, transform)
        self.root = require_path(root, "segmentation folder", FOLDER_LAYOUT)
        image_dir = require_path(self.root / "images", "image folder", FOLDER_LAYOUT)
        mask_dir = self.root / "masks"
        if labeled:
            require_path(mask_dir, "mask folder", FOLDER_LAYOUT)
        images = list_images(image_dir)
        masks = {s: mask_dir / f"{s}.png" for s in images if (mask_dir / f"{s}.png").is_file()}

        if labeled:
            for stem in sorted(masks):
                self.ids.append(stem)
                self.image_paths.append(str(images[stem]))
                self.mask_paths.append(str(masks[stem]))
            if not self.ids:
                raise DataError(
                    f"no labeled images in {self.root}: no image in {image_dir} has a mask "
                    f"{mask_dir}/<name>.png"
                    f"\nExpected layout:\n{FOLDER_LAYOUT}"
                )
        else:
            extra_dir = self.root / "unlabeled"
            extra = list_images(extra_dir) if extra_dir.is_dir() else {}
            for stem, path in images.items():
                self.ids.append(stem)
                self.image_paths.append(str(path))
            for stem, path in extra.items():
                self.ids.append(f"unlabeled/{stem}")
                self.image_paths.append(str(path))
            self.mask_paths = [None] * len(self.ids)
            if not self.ids:
                raise DataError(f"no images in {image_dir}\nExpected layout:\n{FOLDER_LAYOUT}")

        classes_file = self.root / "classes.txt"
        names = read_class_names(classes_file) if classes_file.is_file() else None
        if num_classes is not None and names is not None and len(names) != num_classes:
            raise DataError(f"num_classes={num_classes} but {classes_file} names {len(names)} classes; make them agree")
        if num_classes is None and names is not None:
            num_classes = len(names)
        if num_classes is None and masks:
            num_classes = infer_num_classes([str(p) for p in masks.values()])
        if num_classes is not None and not 1 <= num_classes <= IGNORE_INDEX:
            raise DataError(
                f"num_classes must be between 1 and {IGNORE_INDEX} ({IGNORE_INDEX} is the ignore index), "
                f"got {num_classes}"
            )
        self.num_classes = num_classes
        if names is not None:
            self.class_names = names
        elif num_classes is not None:
            self.class_names = [f"class_{i}" for i in range(num_classes)]


def _listed(dataset: FolderSegmentation, list_file: str, what: str) -> list[int]:
    """Indices in ``dataset`` of the ids listed in ``list_file`` (an unknown id is a DataError naming both)."""
    index = {i: n for n, i in enumerate(dataset.ids)}
    ids = read_id_list(list_file)
    unknown = [i for i in ids if i not in index]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:SHOWN_PATHS]) + (", ..." if len(unknown) > SHOWN_PATHS else "")
        raise DataError(
            f"{list_file} lists {len(unknown)} id(s) that are not {what} of {dataset.root}: {shown} (ids are file "
            "names without extension; unlabeled/ images are unlabeled/<name>)"
        )
    return [index[i] for i in ids]


#: Class names (case-insensitive) that mark a folder's background class in ``classes.txt``.
BACKGROUND_NAMES = ("background", "_background_", "__background__", "bg")


def folder_metadata(class_names: Sequence[str]) -> DatasetMetadata:
    """The metadata of a folder with these classes: the classes ``classes.txt`` names ``background`` (or ``bg``)
    are the background and every other class an object; with no such name, class 0 is the background."""
    marked = [i for i, name in enumerate(class_names) if name.strip().lower() in BACKGROUND_NAMES]
    if not marked:
        return SEG_FOLDER.metadata
    things = tuple(i for i in range(len(class_names)) if i not in marked)
    return DatasetMetadata(thing_classes=things)


def build_seg_folder(options: SegmentationOptions, transform: Transform) -> SegmentationData:
    """The labeled images: every masked image, or those of ``labeled_list``, or ``labeled`` of them drawn with
    ``split_seed``. The unlabeled images: every image (and ``unlabeled/``), or those of ``unlabeled_list``, or with
    ``labeled_list`` the images it does not name. ``val/`` validates (else the masked images)."""
    nc = options.num_classes or None
    masked = FolderSegmentation(options.root, labeled=True, transform=transform, num_classes=nc)
    everything = FolderSegmentation(options.root, labeled=False, transform=transform, num_classes=masked.num_classes)
    labeled: FewDataset = masked
    unlabeled: FewDataset = everything
    if options.labeled_list:
        chosen = _listed(masked, options.labeled_list, "masked images")
        labeled = Subset(masked, chosen)
        if options.unlabeled_list:
            unlabeled = Subset(everything, _listed(everything, options.unlabeled_list, "images"))
        else:
            taken = {masked.ids[i] for i in chosen}
            unlabeled = Subset(everything, [n for n, i in enumerate(everything.ids) if i not in taken])
    elif options.labeled:
        amount: int | float = int(options.labeled) if options.labeled >= 1 else options.labeled
        chosen, _ = labeled_unlabeled_split(len(masked), amount, options.split_seed)
        labeled = Subset(masked, chosen)
    val_root = Path(options.root) / options.val_split
    val = (
        FolderSegmentation(val_root, labeled=True, num_classes=masked.num_classes)
        if (val_root / "images").is_dir()
        else masked
    )
    num_classes = int(masked.num_classes or 0)
    return SegmentationData.from_metadata(
        labeled,
        unlabeled,
        val,
        folder_metadata(masked.class_names),
        num_classes=num_classes,
        class_names=masked.class_names,
    )


def check_seg_folder(root: Path, report: CheckReport) -> None:
    """Check an ``images/`` + ``masks/`` folder: counts, every image decoded (``images/``, ``unlabeled/``,
    ``val/images/``), masks with another extension than ``.png``, masks without an image, sampled mask values."""
    image_dir = root / "images"
    mask_dir = root / "masks"
    images = check_image_dir(report, image_dir, FOLDER_LAYOUT)
    if images is None:
        return
    every = list(images.values())
    if (root / "unlabeled").is_dir():
        extra = list_images(root / "unlabeled")
        report.counts["unlabeled/ images"] = len(extra)
        every += extra.values()
    val_images = root / "val" / "images"
    if val_images.is_dir():
        every += list_images(val_images).values()
    # Every image is decoded in full: a file whose header reads but whose pixels do not would stop training later.
    check_images_decode(report, every)
    for folder in (root / "masks", root / "val" / "masks"):
        if folder.is_dir():
            check_mask_extensions(report, folder)
    num_classes = check_classes_file(report, root)
    if not mask_dir.is_dir():
        report.add_problem(f"mask folder not found: {mask_dir} (no labeled images)\nExpected layout:\n{FOLDER_LAYOUT}")
        return
    masks = {p.stem: p for p in sorted(mask_dir.glob("*.png")) if not p.name.startswith(".")}
    report.counts["masks"] = len(masks)
    labeled = sorted(s for s in masks if s in images)
    report.counts["labeled images"] = len(labeled)
    report.counts["images without a mask"] = len(images) - len(labeled)
    orphans = [masks[s] for s in sorted(masks) if s not in images]
    report_missing(report, "images for masks in masks/ (a mask needs images/<its name>.<ext>)", orphans, len(masks))
    if not labeled:
        report.add_problem(f"no image in {image_dir} has a mask {mask_dir}/<name>.png")
        return
    seen = check_sampled_masks(report, [(images[s], masks[s]) for s in labeled], num_classes)
    valid = [v for v in seen if v != IGNORE_INDEX]
    if valid:
        report.counts["largest class id in sampled masks"] = max(valid)
    if num_classes is None and seen and seen <= {0, IGNORE_INDEX}:
        report.add_problem(
            "sampled masks hold only 0 and 255, but 255 is the ignore index: store a binary task's foreground as 1"
        )


SEG_FOLDER = register_dataset(
    DatasetSpec(
        name="seg-folder",
        description="your segmentation folder: images/ + masks/ (+ classes.txt, unlabeled/, val/)",
        check=check_seg_folder,
        # Classes come from classes.txt or the masks; every class but 0 (the background) is an object, unless
        # classes.txt names the background (folder_metadata).
        metadata=DatasetMetadata(),
        layout=FOLDER_LAYOUT,
        segmentation=build_seg_folder,
        aliases=("folder",),
    )
)
