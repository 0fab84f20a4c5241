"""``digit-mosaics``: real digit scans over real photographs, masks from the ink; and ``data.scenes_seed``."""

from __future__ import annotations

import numpy as np
import pytest

from fewlabels.data.base import DataError
from fewlabels.data.digit_mosaics import (
    DIGIT_MOSAIC_CLASSES,
    INK_THRESHOLD,
    TRAIN_DIGITS,
    DigitMosaics,
    generate_digit_mosaics,
)
from fewlabels.data.digits import digits_arrays
from fewlabels.data.registry import get_dataset
from fewlabels.data.scenes import ScenesDataset
from fewlabels.registry import config_from_dict, get_method

N, SIZE = 40, 48


def test_arrays_have_the_documented_types_and_prefixes_do_not_depend_on_n() -> None:
    big = generate_digit_mosaics(N, SIZE, seed=3)
    small = generate_digit_mosaics(7, SIZE, seed=3)
    assert big["images"].shape == (N, SIZE, SIZE, 3) and big["images"].dtype == np.uint8
    assert big["masks"].shape == (N, SIZE, SIZE) and big["masks"].dtype == np.uint8
    assert int(big["masks"].max()) <= len(DIGIT_MOSAIC_CLASSES) - 1
    for key in ("images", "masks", "scans"):
        np.testing.assert_array_equal(small[key], big[key][:7])
    other = generate_digit_mosaics(7, SIZE, seed=4)
    assert not np.array_equal(other["images"], small["images"])


def test_mask_classes_are_the_labels_of_the_scans_shown() -> None:
    arrays = generate_digit_mosaics(N, SIZE, seed=0)
    _, labels = digits_arrays()
    counts = np.bincount(arrays["masks"].ravel(), minlength=11)
    assert counts[0] > 0.5 * arrays["masks"].size  # mostly background
    assert (counts[1:] > 0).sum() >= 8  # most digits appear in 40 images
    for mask, scans in zip(arrays["masks"], arrays["scans"]):
        shown = {1 + int(labels[s]) for s in scans if s >= 0}
        assert 2 <= (scans >= 0).sum() <= 4
        assert set(np.unique(mask).tolist()) - {0} <= shown


def test_digit_pixels_carry_the_ink_brightness_the_threshold_implies() -> None:
    """A digit pixel has ink >= 0.5 of a colour whose brightest channel is >= 0.8: blended over a background >= 0,
    its brightest channel is >= 0.5 * 0.8 * 255 = 102 (less 1 for rounding); the background is dimmed to <= 35 %
    where no digit has ink, so the two populations are separated on average."""
    arrays = generate_digit_mosaics(N, SIZE, seed=1)
    brightest = arrays["images"].max(axis=3).astype(np.int64)
    digit = arrays["masks"] > 0
    assert INK_THRESHOLD == 0.5
    assert int(brightest[digit].min()) >= 101
    assert brightest[~digit].mean() < brightest[digit].mean() - 60


def test_train_and_val_mosaics_show_disjoint_digit_scans() -> None:
    train = DigitMosaics("train", n=N, size=SIZE)
    val = DigitMosaics("val", n=N, size=SIZE)
    train_scans = generate_digit_mosaics(N, SIZE, seed=0, pool="train")["scans"]
    val_scans = generate_digit_mosaics(N, SIZE, seed=1, pool="val")["scans"]
    assert train_scans[train_scans >= 0].max() < TRAIN_DIGITS <= val_scans[val_scans >= 0].min()
    np.testing.assert_array_equal(train.masks, generate_digit_mosaics(N, SIZE, seed=0)["masks"])
    np.testing.assert_array_equal(val.images, generate_digit_mosaics(N, SIZE, seed=1, pool="val")["images"])
    assert train.num_classes == 11 and train.background_index == 0 and train.thing_classes == list(range(1, 11))
    sample = train.sample(3, None)
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["mask"].shape == (SIZE, SIZE)


def test_bad_arguments_are_data_errors() -> None:
    with pytest.raises(DataError, match="positive"):
        generate_digit_mosaics(0)
    with pytest.raises(DataError, match="at least 16"):
        generate_digit_mosaics(4, 8)
    with pytest.raises(DataError, match="digit pool"):
        generate_digit_mosaics(4, 32, pool="test")
    with pytest.raises(DataError, match="unknown digit-mosaics split"):
        DigitMosaics("test", n=4, size=32)


def test_the_registry_serves_segmentation_and_unsupervised_runs() -> None:
    spec = get_dataset("digit-mosaics", "segmentation")
    assert spec.unsupervised is not None and spec.root == "none"
    config = config_from_dict(
        {
            "method": "cct",
            "data": {"dataset": "digit-mosaics", "labeled": 0.1, "scenes_train": N, "scenes_val": 6}
            | {"scenes_size": SIZE},
        }
    )
    data = get_method("cct")(config).data
    assert len(data.labeled) == 4 and len(data.unlabeled) == N - 4 and len(data.val) == 6
    assert data.num_classes == 11 and list(data.thing_classes) == list(range(1, 11))
    ac = config_from_dict(
        {"method": "ac", "model": {"k": 11}, "data": {"dataset": "digit-mosaics", "scenes_n": 12, "input_size": 32}}
    )
    unsupervised = get_method("ac")(ac).data
    assert unsupervised.num_classes == 11 and len(unsupervised.train) == 12


def test_scenes_seed_selects_another_instance_of_a_generated_dataset() -> None:
    def first_train_image(dataset: str, seed: int) -> np.ndarray:
        config = config_from_dict(
            {
                "method": "supervised",
                "data": {"dataset": dataset, "scenes_train": 8, "scenes_val": 2, "scenes_size": 32}
                | {"scenes_seed": seed},
            }
        )
        data = get_method("supervised")(config).data
        return np.concatenate([data.labeled.images[:1], data.val.images[:1]])  # type: ignore[attr-defined]

    np.testing.assert_array_equal(first_train_image("scenes", 0), first_train_image("scenes", 0))
    seven = first_train_image("scenes", 7)
    assert not np.array_equal(first_train_image("scenes", 0), seven)
    np.testing.assert_array_equal(seven[0], ScenesDataset("train", n=8, size=32, seed=7).images[0])
    np.testing.assert_array_equal(seven[1], ScenesDataset("val", n=2, size=32, seed=7).images[0])
    assert not np.array_equal(first_train_image("digit-mosaics", 0), first_train_image("digit-mosaics", 2))
