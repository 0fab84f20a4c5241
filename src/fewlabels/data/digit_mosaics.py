"""``digit-mosaics``: real handwritten digits composed into segmentation images, with masks from their ink.

A second embedded segmentation dataset, built from real images, next to ``scenes`` (textures): every image is a dim
crop of a real photograph with 2-4 real handwritten digits written over it, and its mask gives each pixel the
digit it shows or ``background``. The mask is exact, read from the ink of the digit scans rather than drawn.

Sources, all inside installed wheels (nothing is downloaded):

- the digits are scikit-learn's ``load_digits``: 1,797 scans of digits written by 13 people on NIST forms (UCI
  "Optical Recognition of Handwritten Digits"), 8 x 8 counts of ink in 4 x 4 blocks (values 0-16). Digits
  0-1,199 feed the ``train`` mosaics and digits 1,200-1,796 the ``val`` mosaics, so no validation image shows a
  training scan;
- the backgrounds are random crops of scikit-image's ``camera()``, ``moon()`` and ``coins()`` photographs,
  resampled so that one image spans ``2 x size`` of their pixels and dimmed to 0-35 % of full brightness.

Each digit is upsampled bilinearly from 8 pixels to a side of 30-45 % of the image, placed at random (a quarter of
it may leave the canvas), given a random ink colour (hue uniform, so colour says nothing of the class) and a
brightness in [0.8, 1], and blended over the image with its ink as opacity (``ink = value / 16``). A pixel whose
ink is at least 0.5 takes the digit's class; later digits overwrite earlier ones where they have ink. The rest is
``background``.

Class indices: 0 ``background``, then 1 + d for the digit d (``"0"`` ... ``"9"``). The ten digit classes are the
*thing* classes (CCT's object masks use them); ``background`` is the background class. Pixel accuracy is
dominated by the background (about 85 % of the pixels), so read mIoU.

Generated images depend only on ``(n, size, seed)`` and the first ``m`` images of a larger ``n`` equal those of
``n = m``; the arrays are cached on disk like the other generated datasets.
"""

from __future__ import annotations

import colorsys
import importlib.metadata
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from fewlabels.data.base import DataError
from fewlabels.data.cache import cached_arrays
from fewlabels.data.common import CheckReport
from fewlabels.data.digits import digits_arrays
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.scenes import ScenesDataset, build_generated_segmentation, build_generated_unsupervised
from fewlabels.data.segmentation import SegmentationData, SegmentationOptions, Transform
from fewlabels.data.unsupervised import UnsupervisedData, UnsupervisedOptions

__all__ = [
    "DIGIT_MOSAICS",
    "DIGIT_MOSAIC_CLASSES",
    "DigitMosaics",
    "INK_THRESHOLD",
    "TRAIN_DIGITS",
    "generate_digit_mosaics",
]

#: Class names, indexed by mask value: the background, then the ten digits.
DIGIT_MOSAIC_CLASSES: tuple[str, ...] = ("background", *(str(d) for d in range(10)))
#: The digit scans 0..TRAIN_DIGITS-1 feed the training mosaics; the others the validation ones.
TRAIN_DIGITS = 1200
#: A pixel whose digit ink (0..1) is at least this belongs to the digit.
INK_THRESHOLD = 0.5

_GENERATOR_VERSION = 1  # bump whenever the output for given (n, size, seed, pool) changes
_DIGITS_PER_IMAGE = (2, 4)
_SIDE = (0.30, 0.45)  # digit side as a fraction of the image side
_BACKGROUND_MAX = 0.35  # the background photograph is dimmed to [0, this] of full brightness


def _photo_sources() -> tuple[np.ndarray, ...]:
    """The grayscale photographs the backgrounds are cut from (uint8, bundled with scikit-image)."""
    from skimage import data

    return (data.camera(), data.moon(), data.coins())


@lru_cache(maxsize=4)
def _backgrounds(size: int) -> tuple[np.ndarray, ...]:
    """Each photograph resampled so that ``2 * size`` source pixels span ``size`` (and at least ``size + 1`` on
    each side), as float32 in [0, 1]."""
    out = []
    for photo in _photo_sources():
        scale = max(0.5, (size + 1) / min(photo.shape))
        h, w = (max(1, round(s * scale)) for s in photo.shape)
        resized = Image.fromarray(photo).resize((w, h), Image.Resampling.LANCZOS)
        out.append(np.asarray(resized, np.float32) / 255.0)
    return tuple(out)


def _pool(split_pool: str) -> np.ndarray:
    """Indices of the digit scans a pool (``train`` or ``val``) draws from."""
    total = digits_arrays()[0].shape[0]
    return np.arange(TRAIN_DIGITS) if split_pool == "train" else np.arange(TRAIN_DIGITS, total)


def _upsampled_ink(scan: np.ndarray, side: int) -> np.ndarray:
    """A digit's ink (0..1) at ``side x side``: the 8 x 8 scan (0..255) resampled bilinearly."""
    image = Image.fromarray(scan.astype(np.float32) / 255.0)  # mode "F"
    return np.clip(np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), np.float32), 0.0, 1.0)


def _render(index: int, size: int, seed: int, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Image ``uint8 [size, size, 3]``, mask ``uint8 [size, size]`` and the digit scans used, of one mosaic."""
    scans, labels = digits_arrays()
    rng = np.random.default_rng([seed, 0xD1617, index])  # one stream per image: prefixes do not depend on n
    photos = _backgrounds(size)
    photo = photos[int(rng.integers(len(photos)))]
    y0 = int(rng.integers(photo.shape[0] - size + 1))
    x0 = int(rng.integers(photo.shape[1] - size + 1))
    grey = photo[y0 : y0 + size, x0 : x0 + size] * (_BACKGROUND_MAX * float(rng.uniform(0.5, 1.0)))
    image = np.repeat(grey[:, :, None], 3, axis=2)
    mask = np.zeros((size, size), np.uint8)
    used = []
    for _ in range(int(rng.integers(_DIGITS_PER_IMAGE[0], _DIGITS_PER_IMAGE[1] + 1))):
        scan = int(pool[int(rng.integers(pool.size))])
        side = max(4, round(size * float(rng.uniform(*_SIDE))))
        ink = _upsampled_ink(scans[scan], side)
        top = int(rng.integers(-side // 4, size - 3 * side // 4 + 1))
        left = int(rng.integers(-side // 4, size - 3 * side // 4 + 1))
        colour = np.asarray(colorsys.hsv_to_rgb(float(rng.random()), 0.6, 1.0), np.float32)
        colour *= float(rng.uniform(0.8, 1.0))
        ty, tx = max(top, 0), max(left, 0)
        by, bx = min(top + side, size), min(left + side, size)
        if by <= ty or bx <= tx:
            continue
        alpha = ink[ty - top : by - top, tx - left : bx - left, None]
        region = image[ty:by, tx:bx]
        image[ty:by, tx:bx] = region * (1.0 - alpha) + colour * alpha
        mask[ty:by, tx:bx][alpha[:, :, 0] >= INK_THRESHOLD] = 1 + int(labels[scan])
        used.append(scan)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mask, used


def generate_digit_mosaics(n: int, size: int = 96, seed: int = 0, pool: str = "train") -> dict[str, np.ndarray]:
    """Generate (or read from the cache) ``n`` mosaics of side ``size`` from the digit scans of ``pool``.

    Returns:
        ``{"images": uint8 [n, size, size, 3], "masks": uint8 [n, size, size], "scans": int16 [n, 4]}``: mask
        values in 0..10 (see :data:`DIGIT_MOSAIC_CLASSES`), ``scans`` the indices of the digit scans each image
        shows (-1 pads). Identical for identical arguments; the first ``m`` images of a larger ``n`` equal
        those of ``n = m``.
    """
    if int(n) <= 0:
        raise DataError(f"n must be a positive number of mosaics, got {n}")
    if int(size) < 16:
        raise DataError(f"size must be at least 16 pixels, got {size}")
    if pool not in ("train", "val"):
        raise DataError(f"unknown digit pool {pool!r}; choose train or val")
    n, size, seed = int(n), int(size), int(seed)
    params = {
        "n": n,
        "size": size,
        "seed": seed,
        "pool": pool,
        "generator": _GENERATOR_VERSION,
        "skimage": importlib.metadata.version("scikit-image"),
        "sklearn": importlib.metadata.version("scikit-learn"),
    }

    def build() -> dict[str, np.ndarray]:
        indices = _pool(pool)
        images = np.empty((n, size, size, 3), np.uint8)
        masks = np.empty((n, size, size), np.uint8)
        scans = np.full((n, _DIGITS_PER_IMAGE[1]), -1, np.int16)
        for i in range(n):
            images[i], masks[i], used = _render(i, size, seed, indices)
            scans[i, : len(used)] = used
        return {"images": images, "masks": masks, "scans": scans}

    return cached_arrays("digit-mosaics", params, build)


class DigitMosaics(ScenesDataset):
    """Segmentation dataset over :func:`generate_digit_mosaics`; the same arguments and samples as
    :class:`~fewlabels.data.scenes.ScenesDataset` (``train`` and ``val`` splits from other seeds and other digit
    scans)."""

    NAME = "digit-mosaics"
    CLASS_NAMES = DIGIT_MOSAIC_CLASSES
    THING_CLASSES = tuple(range(1, len(DIGIT_MOSAIC_CLASSES)))
    BACKGROUND_INDEX = 0

    @staticmethod
    def generate(split: str, n: int, size: int, seed: int) -> dict[str, np.ndarray]:
        return generate_digit_mosaics(n, size, seed, pool="train" if split == "train" else "val")


def build_digit_mosaics_segmentation(options: SegmentationOptions, transform: Transform) -> SegmentationData:
    """``options.labeled`` of ``scenes_train`` training mosaics labeled, the rest unlabeled; ``scenes_val``
    validation mosaics (other seed, other digit scans); ``scenes_seed`` picks the instance."""
    return build_generated_segmentation(DigitMosaics, DIGIT_MOSAICS.metadata, options, transform)


def build_digit_mosaics_unsupervised(options: UnsupervisedOptions) -> UnsupervisedData:
    """``scenes_n`` mosaics of the ``split`` (default train), cropped to ``input_size``; evaluation on the
    ``eval_split`` mosaics, or on the training ones (IIC's IID setting)."""
    return build_generated_unsupervised(DigitMosaics, DIGIT_MOSAICS.metadata, options)


def check_digit_mosaics(root: Path, report: CheckReport) -> None:
    """Check that the sources are installed: scikit-learn's digit scans and scikit-image's photographs."""
    try:
        scans, _ = digits_arrays()
    except (ImportError, OSError, ValueError, DataError) as exc:
        report.add_problem(f"scikit-learn's digits cannot be read ({exc}); reinstall scikit-learn")
    else:
        report.counts["digit scans"] = int(scans.shape[0])
        report.counts["train scans"] = TRAIN_DIGITS
    try:
        report.counts["background photographs"] = len(_photo_sources())
    except (ImportError, OSError, ValueError) as exc:
        report.add_problem(f"scikit-image's sample photographs cannot be read ({exc}); reinstall scikit-image")
    report.counts["classes"] = len(DIGIT_MOSAIC_CLASSES)


DIGIT_MOSAICS = register_dataset(
    DatasetSpec(
        name="digit-mosaics",
        description="embedded: real handwritten digits over real photographs, masks from the ink (no ROOT)",
        check=check_digit_mosaics,
        metadata=DatasetMetadata(class_names=DIGIT_MOSAIC_CLASSES, thing_classes=tuple(range(1, 11))),
        segmentation=build_digit_mosaics_segmentation,
        unsupervised=build_digit_mosaics_unsupervised,
        root="none",
    )
)
