"""``scenes-dim``: the shifted scenes under a dim, noisy camera that keeps each colour's channel order (a target
domain whose classes stay recognisable, unlike ``scenes-shift``'s channel rotation)."""

from __future__ import annotations

import numpy as np

from fewlabels.data.registry import get_dataset
from fewlabels.data.scenes import ScenesDataset
from fewlabels.data.scenes_shift import DimScenes, ShiftedScenes, colour_shift, dim_shift


def test_the_shift_halves_the_contrast_adds_zero_mean_noise_and_keeps_the_channel_order() -> None:
    flat = np.zeros((4, 64, 64, 3), np.uint8)
    flat[..., 0] = 200  # pure red
    flat[1, ..., 1] = 120  # red + some green
    out = dim_shift(flat, [3, 0])
    assert out.dtype == np.uint8 and out.shape == flat.shape
    residual = out.astype(np.float64) - (0.5 * flat + 20.0)
    assert abs(residual.mean()) < 0.1 and 7.8 < residual.std() < 8.2  # normal noise, std 8 (196k draws)
    means = out.reshape(4, -1, 3).mean(axis=1)
    assert np.all(means[:, 0] > means[:, 1] + 30) and means[1, 1] > means[0, 1] + 50  # red stays red
    assert np.array_equal(out, dim_shift(flat, [3, 0])) and not np.array_equal(out, dim_shift(flat, [3, 1]))
    # the rotation of scenes-shift, by contrast, moves red into the green channel
    assert colour_shift(flat)[0, 0, 0].tolist() == [30, 150, 30]


def test_dim_scenes_are_the_shifted_scenes_masks_with_other_pixels() -> None:
    dim, rotated = DimScenes("val", n=6, size=32), ShiftedScenes("val", n=6, size=32)
    plain = ScenesDataset("val", n=6, size=32, seed=1)  # the same scenes, unshifted
    assert np.array_equal(dim.masks, rotated.masks) and np.array_equal(dim.masks, plain.masks)
    assert np.array_equal(dim.images, dim_shift(plain.images, [1, 1]))
    train = DimScenes("train", n=6, size=32)
    assert not np.array_equal(train.masks, dim.masks)  # train and val are other scenes
    spec = get_dataset("scenes-dim")
    assert spec.root == "none" and spec.metadata == get_dataset("scenes-shift").metadata
