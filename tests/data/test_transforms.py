"""Joint image/mask transforms: alignment, determinism, padding with the ignore index."""

from __future__ import annotations

import numpy as np
import pytest

from fewlabels.data.base import DataError
from fewlabels.data.transforms import SegAugment, center_crop, pad_to, resize_pair

PALETTE = np.array([[0, 0, 0], [200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], np.uint8)


def block_mask(h: int = 40, w: int = 56, seed: int = 0, block: int = 8) -> np.ndarray:
    """A label map of constant blocks (classes 1..4) with an asymmetric layout, so flips and shifts show."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, 5, size=(h // block + 1, w // block + 1)).astype(np.uint8)
    return np.kron(coarse, np.ones((block, block), np.uint8))[:h, :w]


def classes_from_image(image: np.ndarray) -> np.ndarray:
    """Invert the palette: the class whose colour is nearest to each pixel."""
    dist = ((image[:, :, None, :].astype(np.int32) - PALETTE[None, None].astype(np.int32)) ** 2).sum(-1)
    return dist.argmin(-1).astype(np.uint8)


def test_crop_and_flip_keep_image_and_mask_exactly_aligned() -> None:
    mask = block_mask()
    image = PALETTE[mask]
    aug = SegAugment(crop_size=32, scale=(1.0, 1.0))
    no_flip = SegAugment(crop_size=32, scale=(1.0, 1.0), hflip=False)
    flipped = 0
    for seed in range(12):
        out_image, out_mask = aug(image, mask, np.random.default_rng(seed))
        assert out_image.shape == (32, 32, 3) and out_mask.shape == (32, 32)
        np.testing.assert_array_equal(classes_from_image(out_image), out_mask)
        plain = no_flip(image, mask, np.random.default_rng(seed))[1]
        if np.array_equal(out_mask, plain[:, ::-1]) and not np.array_equal(out_mask, plain):
            flipped += 1
        else:
            np.testing.assert_array_equal(out_mask, plain)
    assert 0 < flipped < 12


def test_rescaled_image_and_mask_stay_aligned() -> None:
    mask = block_mask(48, 48, seed=1)
    image = PALETTE[mask]
    aug = SegAugment(crop_size=40, scale=(0.6, 1.8))
    for seed in range(10):
        out_image, out_mask = aug(image, mask, np.random.default_rng(seed))
        valid = out_mask != 255
        derived = classes_from_image(out_image)
        # Bilinear blending only touches pixels next to a block edge: away from edges the match is exact.
        agree = (derived == out_mask)[valid].mean()
        assert agree > 0.9
        interior = valid.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = np.roll(np.roll(out_mask, dy, 0), dx, 1)
                interior &= shifted == out_mask
        interior[[0, -1], :] = False
        interior[:, [0, -1]] = False
        assert interior.sum() > 100
        np.testing.assert_array_equal(derived[interior], out_mask[interior])


def test_equal_seeds_give_equal_outputs_and_different_seeds_differ() -> None:
    mask = block_mask()
    image = PALETTE[mask]
    aug = SegAugment(crop_size=24)
    a = aug(image, mask, np.random.default_rng(7))
    b = aug(image, mask, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    others = [aug(image, mask, np.random.default_rng(s))[1] for s in range(8, 14)]
    assert any(not np.array_equal(a[1], o) for o in others)


def test_rng_stream_consumed_does_not_depend_on_the_input() -> None:
    aug = SegAugment(crop_size=16)
    small, big = np.random.default_rng(3), np.random.default_rng(3)
    aug(np.zeros((8, 8, 3), np.uint8), None, small)
    aug(np.zeros((90, 70, 3), np.uint8), np.zeros((90, 70), np.uint8), big)
    assert small.random() == big.random()


def test_padding_uses_zero_for_images_and_the_ignore_index_for_masks() -> None:
    image = np.full((10, 12, 3), 77, np.uint8)
    mask = np.full((10, 12), 2, np.uint8)
    aug = SegAugment(crop_size=32, scale=(1.0, 1.0), hflip=False, ignore_index=250)
    out_image, out_mask = aug(image, mask, np.random.default_rng(0))
    assert out_mask.shape == (32, 32)
    assert set(np.unique(out_mask).tolist()) == {2, 250}
    assert (out_mask == 2).sum() == 10 * 12
    np.testing.assert_array_equal(out_image[out_mask == 250], 0)
    np.testing.assert_array_equal(out_image[out_mask == 2], 77)


def test_unlabeled_images_pass_without_a_mask() -> None:
    image = PALETTE[block_mask()]
    out_image, out_mask = SegAugment(crop_size=20)(image, None, np.random.default_rng(1))
    assert out_mask is None and out_image.shape == (20, 20, 3) and out_image.dtype == np.uint8


def test_resize_pair_keeps_mask_values_and_shapes() -> None:
    mask = block_mask(40, 56)
    image = PALETTE[mask]
    out_image, out_mask = resize_pair(image, mask, (21, 33))
    assert out_image.shape == (21, 33, 3) and out_mask.shape == (21, 33)
    assert set(np.unique(out_mask)) <= set(np.unique(mask))  # nearest neighbour never invents labels
    square, none = resize_pair(image[:, :, :1], None, 16)
    assert square.shape == (16, 16, 1) and none is None
    # a 4th band (e.g. infrared) is resized like the others, not treated as alpha
    four = np.concatenate([image, np.zeros_like(image[:, :, :1])], axis=2)
    out4, _ = resize_pair(four, None, (21, 33))
    np.testing.assert_array_equal(out4[:, :, :3], out_image)
    assert out4[:, :, 3].max() == 0
    with pytest.raises(DataError, match="sizes differ"):
        resize_pair(image, mask[:-1], 8)


def test_center_crop_takes_the_middle_and_pads_when_small() -> None:
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    mask = np.arange(100, dtype=np.uint8).reshape(10, 10)
    c_image, c_mask = center_crop(image, mask, 4)
    np.testing.assert_array_equal(c_mask, mask[3:7, 3:7])
    np.testing.assert_array_equal(c_image, image[3:7, 3:7])
    big_image, big_mask = center_crop(image, mask, (12, 10))
    assert big_mask.shape == (12, 10) and (big_mask == 255).sum() == 20
    assert big_image[big_mask == 255].max() == 0
    padded, _ = pad_to(image, None, 11, 13)
    assert padded.shape == (11, 13, 3)


def test_invalid_arguments_are_rejected_with_a_reason() -> None:
    with pytest.raises(DataError, match="crop_size"):
        SegAugment(crop_size=0)
    with pytest.raises(DataError, match="scale"):
        SegAugment(crop_size=8, scale=(2.0, 1.0))
    with pytest.raises(DataError, match="ignore_index"):
        SegAugment(crop_size=8, ignore_index=300)
