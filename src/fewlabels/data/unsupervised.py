"""Readers for unsupervised segmentation (AC / IIC protocol): COCO-Stuff-3/15, Potsdam-3/6, image folders,
scenes.

Every sample is ``{"image": float32 [C, S, S] in [0, 1], "mask": int64 [S, S] (255 = ignore), "index": int}``
with ``S = input_size``; training (``sample(i, rng)``) takes a random ``S x S`` crop, evaluation
(``dataset[i]``) the centre crop (IIC). Labels are read for evaluation only (and, with
``loss.ignore_unlabelled``, to drop pixels outside the chosen classes, as IIC does on COCO-Stuff).

Layouts (``fewlabels data check cocostuff|potsdam ROOT`` validates them)::

    COCO-Stuff 164k: ROOT/images/{train2017,val2017}/<id>.jpg
                     ROOT/annotations/{train2017,val2017}/<id>.png   fine labels 0..181, 255 unlabeled
                     ROOT/curated/{train2017,val2017}/<list>.txt     Coco164kFew_Stuff_6 (COCO-Stuff-3),
                                                                     Coco164kFull_Stuff_Coarse_7
                                                                     (COCO-Stuff-15)
    Potsdam (IIC):   ROOT/imgs/<id>.mat (key img, uint8 200x200x4 RGB+IR), ROOT/gt/<id>.mat (key gt, 0..5)
                     ROOT/{unlabelled_train,labelled_train,labelled_test}.txt
    folder:          ROOT/images/*.{jpg,png,...} [+ ROOT/masks/<stem>.png for evaluation] [+ ROOT/classes.txt]

COCO-Stuff classes (IIC): fine labels map to the 27 coarse categories (12 things then 15 stuff; table below,
from the COCO-Stuff hierarchy as ordered by IIC). COCO-Stuff-15 keeps the 15 stuff categories (coarse 12..26
-> 0..14); COCO-Stuff-3 keeps sky, plant, ground (-> 0, 1, 2); every other pixel is 255. Images are rescaled
by 0.33 before cropping 128 x 128. Potsdam-3 merges {roads, cars}, {buildings, clutter}, {vegetation, trees}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewlabels.data.base import DataError, FewDataset, require_path, to_chw_float
from fewlabels.data.check import MASK_SAMPLES, CheckReport, register_checker

__all__ = [
    "COARSE_NAMES",
    "COCOSTUFF_LISTS",
    "FINE_TO_COARSE",
    "POTSDAM_CLASSES",
    "CocoStuffDataset",
    "CroppedDataset",
    "ImageFolderDataset",
    "PotsdamDataset",
    "UnsupervisedData",
    "build_unsupervised_data",
    "cocostuff_label_table",
    "find_inputs",
    "read_input_image",
]

IGNORE = 255

#: COCO-Stuff coarse categories: 12 things (0..11) then 15 stuff (12..26).
COARSE_NAMES: tuple[str, ...] = (
    "electronic-things", "appliance-things", "food-things", "furniture-things", "indoor-things",
    "kitchen-things", "accessory-things", "animal-things", "outdoor-things", "person-things",
    "sports-things", "vehicle-things", "ceiling-stuff", "floor-stuff", "food-stuff", "furniture-stuff",
    "rawmaterial-stuff", "textile-stuff", "wall-stuff", "window-stuff", "building-stuff", "ground-stuff",
    "plant-stuff", "sky-stuff", "solid-stuff", "structural-stuff", "water-stuff",
)  # fmt: skip

#: Coarse category of each COCO-Stuff fine label 0..181 (spec/data/cocostuff_fine_to_coarse.json).
FINE_TO_COARSE: tuple[int, ...] = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6,
    6, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 17, 17, 22, 20, 20,
    22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22, 26, 14, 14,
    15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21, 25, 21, 26,
    21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18,
    18, 18, 18, 26, 26, 19, 19, 24,
)  # fmt: skip

#: IIC curated image lists of each COCO-Stuff variant.
COCOSTUFF_LISTS: dict[int, str] = {3: "Coco164kFew_Stuff_6", 15: "Coco164kFull_Stuff_Coarse_7"}
_COCO3_COARSE = (23, 22, 21)  # sky, plant, ground -> 0, 1, 2 (IIC order)

#: Potsdam fine classes (gt values 0..5) and the Potsdam-3 merge.
POTSDAM_CLASSES: tuple[str, ...] = ("roads", "buildings", "vegetation", "trees", "cars", "clutter")
_POTSDAM3 = (0, 1, 2, 2, 0, 1)
_POTSDAM3_NAMES = ("roads and cars", "buildings and clutter", "vegetation and trees")
_POTSDAM_TRAIN_LISTS = ("unlabelled_train", "labelled_train", "labelled_test")

COCO_LAYOUT = """  ROOT/images/{train2017,val2017}/<id>.jpg
  ROOT/annotations/{train2017,val2017}/<id>.png   (fine labels 0..181, 255 = unlabeled)
  ROOT/curated/{train2017,val2017}/Coco164kFew_Stuff_6.txt, Coco164kFull_Stuff_Coarse_7.txt"""
POTSDAM_LAYOUT = """  ROOT/imgs/<id>.mat   (key 'img', uint8 200x200x4 RGB+IR)
  ROOT/gt/<id>.mat     (key 'gt', class ids 0..5)
  ROOT/unlabelled_train.txt, ROOT/labelled_train.txt, ROOT/labelled_test.txt"""
FOLDER_LAYOUT = """  ROOT/images/<name>.<jpg|png|...>
  ROOT/masks/<name>.png   (optional, class indices, 255 = ignore; used for evaluation only)
  ROOT/classes.txt        (optional, one class name per line)"""


def cocostuff_label_table(variant: int) -> np.ndarray:
    """``[256]`` uint8 lookup: fine label -> class of COCO-Stuff-``variant`` (3 or 15), 255 for ignored
    pixels."""
    if variant not in COCOSTUFF_LISTS:
        raise DataError(f"COCO-Stuff variant must be 3 or 15, got {variant}")
    coarse = np.asarray(FINE_TO_COARSE)
    table = np.full(256, IGNORE, dtype=np.uint8)
    if variant == 15:
        stuff = coarse >= 12
        table[np.flatnonzero(stuff)] = coarse[stuff] - 12
    else:
        for cls, c in enumerate(_COCO3_COARSE):
            table[np.flatnonzero(coarse == c)] = cls
    return table


def _rescale(image: np.ndarray, mask: np.ndarray | None, scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    if scale == 1.0:
        return image, mask
    from fewlabels.data.transforms import resize_pair

    h, w = (max(1, int(round(s * scale))) for s in image.shape[:2])
    if image.ndim == 3 and image.shape[2] != 3:
        # per channel: PIL's 4-channel mode is RGBA, whose resize treats the 4th channel (Potsdam IR) as alpha
        chans = [resize_pair(image[:, :, c], None, (h, w))[0] for c in range(image.shape[2])]
        return np.stack(chans, axis=2), None if mask is None else resize_pair(image[:, :, 0], mask, (h, w))[1]
    return resize_pair(image, mask, (h, w))


def _crop(
    image: np.ndarray, mask: np.ndarray | None, size: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random ``size x size`` crop with ``rng``, centre crop without; smaller images are padded (mask 255)."""
    from fewlabels.data.transforms import center_crop, pad_to

    if rng is None:
        return center_crop(image, mask, size, IGNORE)
    image, mask = pad_to(image, mask, size, size, IGNORE)
    top = int(rng.integers(0, image.shape[0] - size + 1))
    left = int(rng.integers(0, image.shape[1] - size + 1))
    image = image[top : top + size, left : left + size]
    return image, None if mask is None else mask[top : top + size, left : left + size]


def _sample(image: np.ndarray, mask: np.ndarray | None, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"image": to_chw_float(image), "index": index}
    if mask is not None:
        out["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
    return out


def _read_mat(path: Path, key: str) -> np.ndarray:
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path))
    except FileNotFoundError as exc:
        raise DataError(f"file not found: {path}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read MATLAB file {path}: {exc}") from exc
    if key not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise DataError(f"{path} has no key {key!r} (keys: {keys}); IIC's Potsdam files store '{key}'")
    return np.asarray(data[key])


def _read_list(path: Path, what: str, layout: str) -> list[str]:
    from fewlabels.data.splits import read_id_list

    require_path(path, what, layout)
    ids = [Path(line).stem if Path(line).suffix else line for line in read_id_list(path)]
    if not ids:
        raise DataError(f"{what} is empty: {path}")
    return ids


def _check_values(mask: np.ndarray, allowed: int, path: Path) -> None:
    bad = np.unique(mask[(mask >= allowed) & (mask != IGNORE)])
    if bad.size:
        raise DataError(f"{path} holds values {bad[:10].tolist()} outside 0..{allowed - 1} (and 255 = ignore)")


class CocoStuffDataset(FewDataset):
    """COCO-Stuff-3 / -15 over an IIC curated list (layout in the module docstring).

    Args:
        root: dataset folder. split: ``train2017`` or ``val2017``. variant: 3 or 15.
        input_size: crop side (IIC: 128). scale: rescale before cropping (IIC: 0.33).
        list_name: curated list (default: IIC's list of the variant).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train2017",
        variant: int = 3,
        input_size: int = 128,
        scale: float = 0.33,
        list_name: str | None = None,
    ) -> None:
        self.root = require_path(root, "COCO-Stuff folder", COCO_LAYOUT)
        self.table = cocostuff_label_table(variant)
        name = list_name or COCOSTUFF_LISTS[variant]
        self.ids = _read_list(self.root / "curated" / split / f"{name}.txt", "curated image list", COCO_LAYOUT)
        self.image_dir = require_path(self.root / "images" / split, "COCO-Stuff image folder", COCO_LAYOUT)
        self.mask_dir = require_path(self.root / "annotations" / split, "COCO-Stuff annotation folder", COCO_LAYOUT)
        self.input_size, self.scale = int(input_size), float(scale)
        self.num_classes = variant
        self.class_names = (
            ["sky", "plant", "ground"] if variant == 3 else [n.removesuffix("-stuff") for n in COARSE_NAMES[12:]]
        )
        self.in_channels = 3
        self.ignore_index = IGNORE

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        from fewlabels.data.segmentation import read_index_mask, read_rgb

        image_id = self.ids[index]
        image = read_rgb(self.image_dir / f"{image_id}.jpg")
        mask_path = self.mask_dir / f"{image_id}.png"
        fine = read_index_mask(mask_path)
        if fine.shape != image.shape[:2]:
            raise DataError(f"{mask_path} is {fine.shape}, its image is {image.shape[:2]}")
        _check_values(fine, len(FINE_TO_COARSE), mask_path)
        labels: np.ndarray | None = self.table[fine.astype(np.int64)]
        image, labels = _rescale(image, labels, self.scale)
        image, labels = _crop(image, labels, self.input_size, rng)
        return _sample(image, labels, index)


class PotsdamDataset(FewDataset):
    """Potsdam-3 / -6 in IIC's preprocessing (layout in the module docstring).

    Args:
        root: dataset folder. lists: split list names (default: all three, IIC's training images).
        variant: 3 or 6. input_size: crop side (IIC: 200, the whole tile).
    """

    def __init__(
        self,
        root: str | Path,
        lists: Sequence[str] = _POTSDAM_TRAIN_LISTS,
        variant: int = 3,
        input_size: int = 200,
    ) -> None:
        if variant not in (3, 6):
            raise DataError(f"Potsdam variant must be 3 or 6, got {variant}")
        self.root = require_path(root, "Potsdam folder", POTSDAM_LAYOUT)
        self.ids: list[str] = []
        self.labelled: list[bool] = []  # IIC ships no ground truth for unlabelled_train: its masks are all 255
        for name in lists:
            ids = _read_list(self.root / f"{name}.txt", "Potsdam split list", POTSDAM_LAYOUT)
            self.ids += ids
            self.labelled += [name != "unlabelled_train"] * len(ids)
        self.variant, self.input_size = variant, int(input_size)
        self.num_classes = variant
        self.class_names = list(_POTSDAM3_NAMES if variant == 3 else POTSDAM_CLASSES)
        self.in_channels = 4
        self.ignore_index = IGNORE
        self.table = np.full(256, IGNORE, dtype=np.uint8)
        self.table[:6] = _POTSDAM3 if variant == 3 else range(6)

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        image_id = self.ids[index]
        img_path, gt_path = self.root / "imgs" / f"{image_id}.mat", self.root / "gt" / f"{image_id}.mat"
        image = _read_mat(img_path, "img")
        if image.ndim != 3 or image.shape[2] != 4 or image.dtype != np.uint8:
            raise DataError(f"{img_path}: 'img' must be uint8 HxWx4 (RGB+IR), got {image.dtype} {image.shape}")
        if not self.labelled[index] and not gt_path.is_file():
            gt = np.full(image.shape[:2], IGNORE, dtype=np.uint8)
        else:
            gt = _read_mat(gt_path, "gt")
        if gt.shape != image.shape[:2]:
            raise DataError(f"{gt_path}: 'gt' is {gt.shape}, its image is {image.shape[:2]}")
        _check_values(gt, 6, gt_path)
        labels: np.ndarray | None = self.table[gt.astype(np.int64)]
        image, labels = _crop(image, labels, self.input_size, rng)
        return _sample(image, labels, index)


class ImageFolderDataset(FewDataset):
    """Images of ``ROOT/images`` (+ optional ``ROOT/masks/<stem>.png`` for evaluation), rescaled and
    cropped."""

    def __init__(self, root: str | Path, input_size: int = 128, scale: float = 1.0) -> None:
        from fewlabels.data.segmentation import list_images, read_class_names

        self.root = require_path(root, "image folder", FOLDER_LAYOUT)
        images = list_images(require_path(self.root / "images", "images folder", FOLDER_LAYOUT))
        if not images:
            raise DataError(f"no images in {self.root / 'images'}\nExpected layout:\n{FOLDER_LAYOUT}")
        self.ids = sorted(images)
        self.paths = [images[i] for i in self.ids]
        mask_dir = self.root / "masks"
        self.mask_paths = [mask_dir / f"{i}.png" for i in self.ids] if mask_dir.is_dir() else None
        if self.mask_paths is not None:
            missing = [str(p) for p in self.mask_paths if not p.is_file()]
            if missing:
                raise DataError(
                    f"{len(missing)} images have no mask, e.g. {missing[:3]}; give every image a "
                    f"mask or remove the masks folder\nExpected layout:\n{FOLDER_LAYOUT}"
                )
        classes = self.root / "classes.txt"
        self.class_names = read_class_names(classes) if classes.is_file() else []
        self.num_classes = len(self.class_names)
        self.input_size, self.scale = int(input_size), float(scale)
        self.in_channels = 3
        self.ignore_index = IGNORE

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        from fewlabels.data.segmentation import read_index_mask, read_rgb

        image = read_rgb(self.paths[index])
        mask: np.ndarray | None = None
        if self.mask_paths is not None:
            mask = read_index_mask(self.mask_paths[index])
            if mask.shape != image.shape[:2]:
                raise DataError(f"{self.mask_paths[index]} is {mask.shape}, its image is {image.shape[:2]}")
            if self.num_classes:
                _check_values(mask, self.num_classes, self.mask_paths[index])
            mask = mask.astype(np.uint8)
        image, mask = _rescale(image, mask, self.scale)
        image, mask = _crop(image, mask, self.input_size, rng)
        return _sample(image, mask, index)


class CroppedDataset(FewDataset):
    """Random (training) / centre (evaluation) ``size`` crops of another dataset's ``image``/``mask``."""

    def __init__(self, dataset: FewDataset, size: int) -> None:
        self.dataset, self.size = dataset, int(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        item = self.dataset.sample(index, None)
        image = item["image"].permute(1, 2, 0).numpy()
        mask = item["mask"].numpy() if "mask" in item else None
        if image.shape[:2] != (self.size, self.size):
            image, mask = _crop(image, mask, self.size, rng)
        out: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "index": index,
        }
        if mask is not None:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask))
        return out


@dataclass
class UnsupervisedData:
    """Training and evaluation images of one unsupervised run (labels of ``eval`` used only to evaluate)."""

    train: FewDataset
    eval: FewDataset
    num_classes: int
    class_names: list[str]
    in_channels: int
    ignore_index: int = IGNORE


def build_unsupervised_data(
    kind: str,
    root: str = "",
    split: str = "",
    eval_split: str = "",
    input_size: int = 128,
    scale: float = 1.0,
    scenes_n: int = 600,
    scenes_size: int = 96,
    seed: int = 0,
) -> UnsupervisedData:
    """Datasets of ``kind`` (scenes | cocostuff3 | cocostuff15 | potsdam3 | potsdam6 | folder).

    ``split`` selects the training images (COCO: ``train2017`` default; Potsdam: comma-separated list names,
    default all three); ``eval_split`` the evaluation images ('' = the training images: IIC's "IID" setting).
    """
    if kind == "scenes":
        from fewlabels.data.scenes import ScenesDataset

        scenes = ScenesDataset(split or "train", n=scenes_n, size=scenes_size, seed=seed)
        ev = ScenesDataset(eval_split, n=scenes_n, size=scenes_size, seed=seed) if eval_split else scenes
        return UnsupervisedData(
            CroppedDataset(scenes, input_size),
            CroppedDataset(ev, input_size),
            scenes.num_classes,
            list(scenes.class_names),
            3,
        )
    if kind.startswith("cocostuff"):
        variant = int(kind.removeprefix("cocostuff"))
        coco = CocoStuffDataset(root, split or "train2017", variant, input_size, scale)
        ev_coco = CocoStuffDataset(root, eval_split, variant, input_size, scale) if eval_split else coco
        return UnsupervisedData(coco, ev_coco, coco.num_classes, coco.class_names, 3)
    if kind.startswith("potsdam"):
        variant = int(kind.removeprefix("potsdam"))
        lists = tuple(s for s in split.split(",") if s) or _POTSDAM_TRAIN_LISTS
        pots = PotsdamDataset(root, lists, variant, input_size)
        eval_lists = tuple(s for s in eval_split.split(",") if s)
        ev_pots = PotsdamDataset(root, eval_lists, variant, input_size) if eval_lists else pots
        return UnsupervisedData(pots, ev_pots, variant, pots.class_names, 4)
    if kind == "folder":
        folder = ImageFolderDataset(root, input_size, scale)
        ev_folder = ImageFolderDataset(Path(root) / eval_split, input_size, scale) if eval_split else folder
        names = folder.class_names or [str(i) for i in range(folder.num_classes)]
        return UnsupervisedData(folder, ev_folder, folder.num_classes, names, 3)
    raise DataError(
        f"unknown unsupervised dataset {kind!r}; choose scenes, cocostuff3, cocostuff15, potsdam3, potsdam6 or folder"
    )


# --- prediction inputs
# ----------------------------------------------------------------------------------------
def find_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Image (and Potsdam ``.mat``) files among ``inputs``; folders are searched recursively."""
    from fewlabels.data.segmentation import IMAGE_EXTENSIONS

    suffixes = set(IMAGE_EXTENSIONS) | {".mat"}
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input not found: {p}")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))} (looked for {sorted(suffixes)})")
    return files


def read_input_image(path: Path, in_channels: int, scale: float = 1.0) -> torch.Tensor:
    """``[C, H, W]`` float image for prediction: RGB files, or Potsdam ``.mat`` (key ``img``) for 4
    channels."""
    from fewlabels.data.segmentation import read_rgb

    image = _read_mat(path, "img") if path.suffix.lower() == ".mat" else read_rgb(path)
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels != in_channels:
        raise DataError(f"{path} has {channels} channels but the model expects {in_channels}")
    image, _ = _rescale(image.astype(np.uint8), None, scale)
    return to_chw_float(image)


# --- fewlabels data check
# ---------------------------------------------------------------------------------------
@register_checker("cocostuff", "COCO-Stuff 164k with IIC curated lists (AC: cocostuff3, cocostuff15)")
def check_cocostuff(root: Path, report: CheckReport) -> None:
    from fewlabels.data.segmentation import read_index_mask

    for split in ("train2017", "val2017"):
        for variant, name in COCOSTUFF_LISTS.items():
            path = root / "curated" / split / f"{name}.txt"
            if not path.is_file():
                report.add_problem(
                    f"missing curated list (COCO-Stuff-{variant}): {path}\nExpected layout:\n{COCO_LAYOUT}"
                )
                continue
            ids = _read_list(path, "curated list", COCO_LAYOUT)
            report.counts[f"{split} COCO-Stuff-{variant} images"] = len(ids)
            missing = [i for i in ids if not (root / "images" / split / f"{i}.jpg").is_file()]
            missing += [i for i in ids if not (root / "annotations" / split / f"{i}.png").is_file()]
            if missing:
                report.add_problem(
                    f"{len(missing)} images/annotations of {path.name} ({split}) are missing, e.g. {missing[:5]}"
                )
            for i in ids[:MASK_SAMPLES]:
                mask_path = root / "annotations" / split / f"{i}.png"
                if mask_path.is_file():
                    _check_values(read_index_mask(mask_path), len(FINE_TO_COARSE), mask_path)


@register_checker("potsdam", "ISPRS Potsdam in IIC's .mat preprocessing (AC: potsdam3, potsdam6)")
def check_potsdam(root: Path, report: CheckReport) -> None:
    for name in _POTSDAM_TRAIN_LISTS:
        path = root / f"{name}.txt"
        if not path.is_file():
            report.add_problem(f"missing split list: {path}\nExpected layout:\n{POTSDAM_LAYOUT}")
            continue
        ids = _read_list(path, "Potsdam split list", POTSDAM_LAYOUT)
        report.counts[f"{name} images"] = len(ids)
        missing = [str(root / "imgs" / f"{i}.mat") for i in ids if not (root / "imgs" / f"{i}.mat").is_file()]
        if name != "unlabelled_train":
            missing += [str(root / "gt" / f"{i}.mat") for i in ids if not (root / "gt" / f"{i}.mat").is_file()]
        if missing:
            report.add_problem(f"{len(missing)} files of {path.name} are missing, e.g. {missing[:5]}")
        if name != "unlabelled_train":
            for i in ids[:MASK_SAMPLES]:
                gt_path = root / "gt" / f"{i}.mat"
                if gt_path.is_file():
                    _check_values(_read_mat(gt_path, "gt"), 6, gt_path)
