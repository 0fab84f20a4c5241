"""Readers for semantic-segmentation datasets in their usual on-disk layouts.

Three layouts are supported: Pascal VOC 2012 (with the SBD "aug" labels), Cityscapes (fine annotations) and a
generic ``images/`` + ``masks/`` folder in which some images may have no mask at all (the reference CCT
required a label for every image: its issue #14). Every reader is a
:class:`~fewlabels.data.base.FewDataset` whose ``sample(index, rng)`` returns::

    {"image": float32 [3, H, W] in [0, 1], "mask": int64 [H, W] (255 = ignore), "index": int, "id": str}

with no ``"mask"`` key when the dataset is built with ``labeled=False``. An optional ``transform`` callable
``(image HxWx3 uint8, mask HxW uint8 | None, rng) -> (image, mask)`` is applied only when ``rng`` is not None,
so evaluation (``dataset[index]``) always sees the untouched image.

Every file that should exist is checked when the dataset is built (a missing one raises a ``DataError`` naming
its path and the expected layout); decoding problems, out-of-range mask values and image/mask size mismatches
raise a ``DataError`` naming the file when the sample is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fewlabels.data.base import DataError, FewDataset, require_path, to_chw_float

IGNORE_INDEX = 255

Transform = Callable[[np.ndarray, np.ndarray | None, np.random.Generator], tuple[np.ndarray, np.ndarray | None]]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

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
                                         '/JPEGImages/<id>.jpg /SegmentationClass[Aug]/<id>.png'"""

CITYSCAPES_CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# Cityscapes label id -> train id (cityscapesScripts' labels.py): the 19 evaluated classes get 0..18, every
# other label id (void, ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer,
# license plate...) is ignored.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}


def _cityscapes_lookup_table() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


CITYSCAPES_LABEL_TO_TRAIN = _cityscapes_lookup_table()

CITYSCAPES_LAYOUT = """\
  <root>/
    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       34 label ids, mapped to 19 train ids
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  optional, used as is when present"""

FOLDER_LAYOUT = """\
  <root>/
    images/<name>.<jpg|png|...>     every image (with or without a mask)
    masks/<name>.png                class index per pixel (0..num_classes-1, 255 = ignore), image's stem
    classes.txt                     optional, one class name per line (defines num_classes)
    unlabeled/<name>.<jpg|png|...>  optional extra images without masks (used only with labeled=False)"""


# ----------------------------------------------------------------------------------------------------
# Reading files


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file into an HxWx3 uint8 array (DataError with the path if it fails to decode)."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}. Re-export or remove this file.") from exc
    return np.asarray(rgb, dtype=np.uint8)


def read_index_mask(path: str | Path) -> np.ndarray:
    """Decode a class-index mask (palette, grey or 16-bit PNG) into an HxW integer array.

    Palette PNGs (VOC ``SegmentationClass``) are read as their palette indices, never as RGB colours. A
    colour (RGB) mask is accepted only when its three channels are equal; otherwise it is a DataError, because
    colours cannot be turned into class indices without a palette.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGB", "RGBA", "LA"):
                arr = np.asarray(img.convert("RGB" if mode != "LA" else "L"))
            else:
                arr = np.asarray(img)
    except FileNotFoundError as exc:
        raise DataError(f"mask not found: {path}") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode mask {path}: {exc}. Re-export or remove this file.") from exc
    if arr.ndim == 3:
        # A colour mask is usable only when it is grey (three equal channels): colours are not class indices.
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DataError(
                f"mask {path} is a colour ({mode}) image; masks must hold one class index per pixel "
                "(palette or greyscale PNG)."
            )
        arr = np.ascontiguousarray(arr[..., 0])
    if arr.ndim != 2:
        raise DataError(f"mask {path} has shape {arr.shape}; expected a single-channel HxW index image.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        raise DataError(f"mask {path} holds floating-point values; masks must hold integer class indices.")
    return arr


def check_mask_values(mask: np.ndarray, num_classes: int, path: str | Path, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise DataError naming ``path`` and the offending values if ``mask`` has values outside
    ``[0, num_classes)`` other than ``ignore_index``."""
    if mask.size == 0:
        return
    if int(mask.max()) < num_classes and int(mask.min()) >= 0:
        return
    values = np.unique(mask)
    bad = [int(v) for v in values if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise DataError(
            f"mask {path} has values outside 0..{num_classes - 1} (and {ignore_index} = ignore): {shown}. "
            "Fix the mask, or declare more classes."
        )


def _check_same_size(image: np.ndarray, mask: np.ndarray, image_path: str, mask_path: str) -> None:
    if image.shape[:2] != mask.shape[:2]:
        ih, iw = image.shape[:2]
        mh, mw = mask.shape[:2]
        raise DataError(
            f"image and mask sizes differ: image {image_path} is {iw}x{ih} (WxH) but mask {mask_path} is "
            f"{mw}x{mh}. A mask must have exactly the size of its image."
        )


class ListEntry(NamedTuple):
    """One line of a split list: the image id and, when the line names them, the image and mask paths."""

    id: str
    image: str | None = None
    mask: str | None = None


def parse_list_entry(line: str) -> ListEntry | None:
    """Parse one split-list line: a bare id (``2007_000032``), a file name, or a pair of paths
    ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`` (CCT / UniMatch lists).
    Blank lines and ``#`` comments give None."""
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


def _missing_error(what: str, paths: Sequence[str], layout: str, total: int) -> DataError:
    shown = "\n".join(f"  {p}" for p in paths[:5])
    more = f"\n  ... and {len(paths) - 5} more" if len(paths) > 5 else ""
    return DataError(f"{len(paths)} of {total} {what} not found, e.g.:\n{shown}{more}\nExpected layout:\n{layout}")


def _to_image_tensor(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.float()
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return to_chw_float(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()


def _to_mask_tensor(mask: Any) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        return mask.long()
    return torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))


class SegmentationDataset(FewDataset):
    """Shared behaviour of the segmentation readers.

    Subclasses fill ``ids``, ``image_paths``, ``mask_paths`` (None entries when unlabeled), ``num_classes``
    and ``class_names``, and override :meth:`read_mask` when masks need a mapping.

    The transform may return the image as a uint8 HxWx3 array (scaled to [0, 1] here), a float HxWx3 array
    already in [0, 1], or a CHW tensor; the mask as an integer HxW array or tensor.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, labeled: bool, transform: Transform | None) -> None:
        self.labeled = bool(labeled)
        self.transform = transform
        self.ids: list[str] = []
        self.image_paths: list[str] = []
        self.mask_paths: list[str | None] = []
        self.num_classes: int | None = None
        self.class_names: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def read_mask(self, index: int) -> np.ndarray:
        """Class-index mask of sample ``index`` as an HxW uint8 array (255 = ignore), validated against
        ``num_classes``."""
        path = self.mask_paths[index]
        if path is None:
            raise DataError(f"sample {self.ids[index]!r} has no mask (dataset built with labeled=False)")
        mask = read_index_mask(path)
        if self.num_classes is not None:
            check_mask_values(mask, self.num_classes, path, self.ignore_index)
        return mask.astype(np.uint8, copy=False)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded ``(image HxWx3 uint8, mask HxW uint8 | None)`` of sample ``index``, before transforms."""
        image = read_rgb(self.image_paths[index])
        if not self.labeled:
            return image, None
        mask = self.read_mask(index)
        _check_same_size(image, mask, self.image_paths[index], str(self.mask_paths[index]))
        return image, mask

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        """Sample ``index``; the transform (if any) runs only when ``rng`` is given."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index = index % n
        image, mask = self.read(index)
        if self.transform is not None and rng is not None:
            image, mask = self.transform(image, mask, rng)
        out: dict[str, Any] = {"image": _to_image_tensor(image), "index": index, "id": self.ids[index]}
        if self.labeled:
            out["mask"] = _to_mask_tensor(mask)
        return out


def _require_all(paths: Sequence[str], what: str, layout: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise _missing_error(what, missing, layout, len(paths))


# ----------------------------------------------------------------------------------------------------
# Pascal VOC


def voc_mask_dir(root: str | Path, split: str, use_aug_labels: bool | None = None) -> Path:
    """The VOC mask folder for ids whose list line names no mask.

    ``SegmentationClassAug/`` when ``use_aug_labels`` is True, or when it is None and the split name contains
    "aug" or ``SegmentationClass/`` is absent; ``SegmentationClass/`` otherwise.
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
        ids: overrides the split list: a list of ids (or list-file lines), or the path of a list file such
            as CCT's ``1464_train_supervised.txt`` whose lines are bare ids or
            ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` pairs. A ``str``/``Path`` is a file.
        labeled: False drops the masks (no mask file needed, no ``"mask"`` key): the unlabeled half of CCT.
        use_aug_labels: True reads every mask from ``SegmentationClassAug/``, False from
            ``SegmentationClass/``. None (default) follows the mask path of each list line when it names
            one, and otherwise uses ``SegmentationClassAug/`` for splits whose name contains "aug"
            (``trainaug``) or when ``SegmentationClass/`` does not exist, ``SegmentationClass/`` else.
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
        _require_all(self.image_paths, f"images listed in {source}", VOC_LAYOUT)
        if labeled:
            _require_all([str(p) for p in self.mask_paths], f"masks for the ids in {source}", VOC_LAYOUT)


# ----------------------------------------------------------------------------------------------------
# Cityscapes


def cityscapes_label_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``labelIds`` mask (34 label ids) to the 19 train ids, other ids -> 255 (uint8)."""
    arr = np.asarray(label_ids)
    if arr.dtype != np.uint8:
        arr = np.where((arr >= 0) & (arr < 256), arr, IGNORE_INDEX).astype(np.uint8)
    return CITYSCAPES_LABEL_TO_TRAIN[arr]


def find_cityscapes_images(root: str | Path, split: str) -> list[tuple[str, Path]]:
    """Sorted ``(id, image path)`` pairs of ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``; the id is
    ``<city>/<city>_<seq>_<frame>``."""
    split_dir = require_path(
        Path(root) / "leftImg8bit" / split, f"Cityscapes image folder for split {split!r}", CITYSCAPES_LAYOUT
    )
    found = []
    for city_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for image in sorted(city_dir.glob("*_leftImg8bit.png")):
            prefix = image.name[: -len("_leftImg8bit.png")]
            found.append((f"{city_dir.name}/{prefix}", image))
    return found


class CityscapesSegmentation(SegmentationDataset):
    """Cityscapes with fine annotations, 19 train classes (255 = ignore).

    Masks are read from ``*_gtFine_labelTrainIds.png`` when that file exists (used as is) and otherwise from
    ``*_gtFine_labelIds.png`` mapped through :data:`CITYSCAPES_ID_TO_TRAIN_ID` (every other id -> 255).
    Ids are ``<city>/<city>_<seq>_<frame>``, sorted.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        labeled: bool = True,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(labeled, transform)
        self.root = require_path(root, "Cityscapes root folder", CITYSCAPES_LAYOUT)
        self.split = split
        self.num_classes = len(CITYSCAPES_CLASS_NAMES)
        self.class_names = list(CITYSCAPES_CLASS_NAMES)
        images = find_cityscapes_images(self.root, split)
        if not images:
            raise DataError(
                f"Cityscapes split {split!r} is empty: no *_leftImg8bit.png under "
                f"{self.root / 'leftImg8bit' / split}"
                f"\nExpected layout:\n{CITYSCAPES_LAYOUT}"
            )
        self.mask_is_train_ids: list[bool] = []
        if labeled:
            require_path(
                self.root / "gtFine" / split,
                f"Cityscapes annotation folder for split {split!r}",
                CITYSCAPES_LAYOUT,
            )
        missing = []
        for ident, image in images:
            self.ids.append(ident)
            self.image_paths.append(str(image))
            if not labeled:
                self.mask_paths.append(None)
                self.mask_is_train_ids.append(False)
                continue
            base = self.root / "gtFine" / split / ident
            train_ids = base.parent / f"{base.name}_gtFine_labelTrainIds.png"
            label_ids = base.parent / f"{base.name}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.mask_paths.append(str(train_ids))
                self.mask_is_train_ids.append(True)
            else:
                self.mask_paths.append(str(label_ids))
                self.mask_is_train_ids.append(False)
                if not label_ids.is_file():
                    missing.append(str(label_ids))
        if missing:
            raise _missing_error(f"Cityscapes {split} annotations", missing, CITYSCAPES_LAYOUT, len(images))

    def read_mask(self, index: int) -> np.ndarray:
        """Train-id mask (0..18, 255 = ignore) of sample ``index``."""
        if self.mask_is_train_ids[index]:
            return super().read_mask(index)
        path = self.mask_paths[index]
        if path is None:
            raise DataError(f"sample {self.ids[index]!r} has no mask (dataset built with labeled=False)")
        return cityscapes_label_to_train_ids(read_index_mask(path))


# ----------------------------------------------------------------------------------------------------
# Generic folder


def list_images(folder: Path) -> dict[str, Path]:
    """Image files directly inside ``folder`` by stem (hidden files skipped); two images with the same stem
    are a DataError, since their masks could not be told apart."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in found:
            raise DataError(f"two images share the name {path.stem!r}: {found[path.stem]} and {path}; rename one")
        found[path.stem] = path
    return found


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a ``classes.txt`` file, one per non-empty line."""
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def _infer_num_classes(mask_paths: Sequence[str]) -> int:
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

    Images without a mask are allowed. ``labeled=True`` uses only the images that have a mask (sorted by
    name); ``labeled=False`` uses every image in ``images/`` (with or without a mask) plus every image in the
    optional ``unlabeled/`` folder, whose ids are prefixed ``unlabeled/``; no mask is read.

    The number of classes comes from ``num_classes``, else from ``classes.txt``, else (for a folder with
    masks) from the largest mask value other than 255 -- which reads every mask once; pass ``num_classes`` to
    skip that. An unlabeled folder with neither gets ``num_classes = None``. Mask values ``>= num_classes``
    other than 255 raise a DataError naming the file when the sample is read.
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
            num_classes = _infer_num_classes([str(p) for p in masks.values()])
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
