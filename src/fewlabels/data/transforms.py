"""Joint image/mask transforms for segmentation (NumPy in, NumPy out).

Images are ``HxWxC`` uint8 arrays and masks ``HxW`` uint8 arrays. Images are resampled bilinearly and masks
with nearest neighbour through the same PIL resize, so both use the same pixel-centre convention and stay
aligned; padding fills images with 0 and masks with the ignore index, so padded pixels never count in a loss
or a metric.

Randomness only comes from the ``numpy.random.Generator`` passed in, and every call draws the same number of
values in the same order whatever the image size, so equal seeds give equal outputs (see ``fewlabels.data.base``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from fewlabels.data.base import DataError

__all__ = ["SegAugment", "center_crop", "pad_to", "resize_pair"]

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise DataError(f"size must be positive, got {size!r}")
    return h, w


def _check_pair(image: np.ndarray, mask: np.ndarray | None) -> None:
    if image.ndim not in (2, 3):
        raise DataError(f"image must be HxW or HxWxC, got shape {image.shape}")
    if mask is not None and mask.shape[:2] != image.shape[:2]:
        raise DataError(f"image and mask sizes differ: image {image.shape[:2]}, mask {mask.shape[:2]}")


def _resize_image(image: np.ndarray, h: int, w: int) -> np.ndarray:
    if image.shape[:2] == (h, w):
        return image
    if image.ndim == 2 or image.shape[2] in (1, 3):
        squeeze = image.ndim == 3 and image.shape[2] == 1
        src = image[:, :, 0] if squeeze else image
        out = np.asarray(Image.fromarray(src).resize((w, h), Image.Resampling.BILINEAR))
        return out[:, :, None] if squeeze else out
    # Other channel counts go channel by channel: 4 channels would be RGBA, whose resize premultiplies by the
    # 4th channel as alpha (wrong for e.g. an infrared band), and PIL has no mode for the rest.
    return np.stack([_resize_image(image[:, :, c], h, w) for c in range(image.shape[2])], axis=2)


def _resize_mask(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    if mask.shape == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: Size) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize ``image`` (bilinear) and ``mask`` (nearest) to ``size`` (an int for a square, or ``(h, w)``)."""
    _check_pair(image, mask)
    h, w = _hw(size)
    return _resize_image(image, h, w), None if mask is None else _resize_mask(mask, h, w)


def pad_to(
    image: np.ndarray, mask: np.ndarray | None, min_h: int, min_w: int, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad at the bottom and right to at least ``min_h x min_w``: image with 0, mask with ``ignore_index``."""
    _check_pair(image, mask)
    ph, pw = max(0, min_h - image.shape[0]), max(0, min_w - image.shape[1])
    if ph == 0 and pw == 0:
        return image, mask
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2)
    image = np.pad(image, widths, mode="constant", constant_values=0)
    if mask is not None:
        mask = np.pad(mask, [(0, ph), (0, pw)], mode="constant", constant_values=ignore_index)
    return image, mask


def center_crop(
    image: np.ndarray, mask: np.ndarray | None, size: Size, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop the centre ``size`` window of image and mask, first padding (:func:`pad_to`) when too small."""
    h, w = _hw(size)
    image, mask = pad_to(image, mask, h, w, ignore_index)
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    image = image[top : top + h, left : left + w]
    if mask is not None:
        mask = mask[top : top + h, left : left + w]
    return image, mask


class SegAugment:
    """Random rescale, pad, crop and horizontal flip applied identically to an image and its mask.

    Args:
        crop_size: side of the square output.
        scale: range of the uniform random rescale factor applied to both sides.
        hflip: flip left-right with probability 1/2.
        ignore_index: mask value written into padded pixels.

    Calling it with ``(image HxWxC uint8, mask HxW uint8 or None, rng)`` returns ``(image, mask)`` of side
    ``crop_size``; a ``None`` mask stays ``None`` (unlabeled images).
    """

    def __init__(
        self,
        crop_size: int,
        scale: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        ignore_index: int = 255,
    ) -> None:
        if int(crop_size) <= 0:
            raise DataError(f"crop_size must be positive, got {crop_size}")
        lo, hi = float(scale[0]), float(scale[1])
        if not 0 < lo <= hi:
            raise DataError(f"scale must be a range 0 < low <= high, got {scale}")
        if not 0 <= int(ignore_index) <= 255:
            raise DataError(f"ignore_index must fit in a uint8 mask (0..255), got {ignore_index}")
        self.crop_size = int(crop_size)
        self.scale = (lo, hi)
        self.hflip = bool(hflip)
        self.ignore_index = int(ignore_index)

    def __repr__(self) -> str:
        return (
            f"SegAugment(crop_size={self.crop_size}, scale={self.scale}, hflip={self.hflip}, "
            f"ignore_index={self.ignore_index})"
        )

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        _check_pair(image, mask)
        # Draw every random value up front, in a fixed order: the stream consumed never depends on the input.
        s = rng.uniform(self.scale[0], self.scale[1])
        u_top, u_left = rng.random(), rng.random()
        flip = bool(rng.random() < 0.5) and self.hflip

        h = max(1, int(round(image.shape[0] * s)))
        w = max(1, int(round(image.shape[1] * s)))
        image, mask = resize_pair(image, mask, (h, w))
        c = self.crop_size
        image, mask = pad_to(image, mask, c, c, self.ignore_index)
        top = int(u_top * (image.shape[0] - c + 1))
        left = int(u_left * (image.shape[1] - c + 1))
        image = image[top : top + c, left : left + c]
        if mask is not None:
            mask = mask[top : top + c, left : left + c]
        if flip:
            image = image[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
        image = np.ascontiguousarray(image)
        return image, None if mask is None else np.ascontiguousarray(mask)
