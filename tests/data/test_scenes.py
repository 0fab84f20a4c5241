"""The embedded segmentation benchmark ``scenes`` and the dataset cache it is stored in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fewlabels.data import scenes
from fewlabels.data.base import DataError
from fewlabels.data.cache import cache_dir, cached_arrays
from fewlabels.data.scenes import SCENE_CLASSES, ScenesDataset, generate_scenes
from fewlabels.data.transforms import SegAugment

SIZE = 48


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEWLABELS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- cache --------------------------------------------------------------------------------------------------


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEWLABELS_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("FEWLABELS_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "fewlabels"


def test_cache_builds_once_then_reads_back(fresh_cache: Path) -> None:
    calls = []

    def build() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.ones(2, np.float32)}

    first = cached_arrays("unit", {"k": 1, "t": (1, 2)}, build)
    second = cached_arrays("unit", {"t": [1, 2], "k": 1}, build)  # the same key
    assert len(calls) == 1
    np.testing.assert_array_equal(first["a"], second["a"])
    assert second["a"].dtype == np.int16 and second["b"].dtype == np.float32
    cached_arrays("unit", {"k": 2, "t": (1, 2)}, build)  # another parameter: another entry
    assert len(calls) == 2
    files = sorted(p.name for p in fresh_cache.iterdir())
    # two entries and no leftover temporary files
    assert len(files) == 2 and all(f.startswith("unit-") and f.endswith(".npz") for f in files)


def test_an_interrupted_write_leaves_no_partial_file(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabels.data import cache

    def fail_replace(src: str, dst: str) -> None:
        assert Path(src).stat().st_size > 0 and not Path(dst).exists()  # complete temp file, target untouched
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", fail_replace)
    with pytest.warns(UserWarning, match="could not write dataset cache"):
        out = cached_arrays("unit", {}, lambda: {"a": np.arange(4)})
    np.testing.assert_array_equal(out["a"], np.arange(4))  # the data is still returned
    assert list(fresh_cache.iterdir()) == []  # and the temporary file was removed


def test_a_corrupt_cache_file_is_rebuilt(fresh_cache: Path) -> None:
    cached_arrays("unit", {}, lambda: {"a": np.zeros(3)})
    (path,) = fresh_cache.iterdir()
    path.write_bytes(b"truncated")
    again = cached_arrays("unit", {}, lambda: {"a": np.full(3, 5.0)})
    np.testing.assert_array_equal(again["a"], 5.0)
    np.testing.assert_array_equal(np.load(path)["a"], 5.0)


# --- generator ----------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_scenes_and_other_seeds_differ(fresh_cache: Path, tmp_path: Path) -> None:
    a = generate_scenes(24, SIZE, seed=5)
    os.environ["FEWLABELS_CACHE"] = str(tmp_path / "other-cache")  # rebuild, not a cache read
    b = generate_scenes(24, SIZE, seed=5)
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["masks"], b["masks"])
    c = generate_scenes(24, SIZE, seed=6)
    assert (a["masks"] != c["masks"]).mean() > 0.3
    prefix = generate_scenes(10, SIZE, seed=5)
    np.testing.assert_array_equal(prefix["images"], a["images"][:10])


def test_arrays_have_the_documented_shapes_and_every_class_appears() -> None:
    data = generate_scenes(60, SIZE, seed=0)
    images, masks = data["images"], data["masks"]
    assert images.shape == (60, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert masks.shape == (60, SIZE, SIZE) and masks.dtype == np.uint8
    assert masks.max() < len(SCENE_CLASSES)
    counts = np.bincount(masks.ravel(), minlength=len(SCENE_CLASSES))
    assert (counts > 0).all()
    assert counts[:3].sum() > counts[3:].sum()  # stuff covers most of the canvas
    per_image = [set(np.unique(m).tolist()) for m in masks]
    assert all(len(s & {0, 1, 2}) >= 2 for s in per_image)  # 2-3 stuff regions
    assert all(s & {3, 4, 5} for s in per_image)  # at least one thing
    assert images.std() > 20  # textured, not flat


def test_masks_are_pixel_exact() -> None:
    """Every stuff-labelled pixel shows the stuff layer unchanged; thing-labelled pixels were painted over."""
    n = 16
    draws = scenes._draw_parameters(n, seed=2)
    images, masks = scenes._render_chunk(draws, SIZE)
    stuff_images, stuff_masks = scenes._render_chunk(draws, SIZE, things=False)
    is_stuff = masks < 3
    np.testing.assert_array_equal(masks[is_stuff], stuff_masks[is_stuff])
    np.testing.assert_array_equal(images[is_stuff], stuff_images[is_stuff])
    painted = (images != stuff_images).any(-1)
    assert painted[~is_stuff].mean() > 0.97
    np.testing.assert_array_equal(images, generate_scenes(n, SIZE, seed=2)["images"])


def test_invalid_generator_arguments_raise() -> None:
    with pytest.raises(DataError, match="positive"):
        generate_scenes(0, SIZE)
    with pytest.raises(DataError, match="at least 16"):
        generate_scenes(4, 8)


# --- dataset ------------------------------------------------------------------------------------------------


def test_dataset_samples_have_the_protocol_types() -> None:
    ds = ScenesDataset("train", n=12, size=SIZE)
    item = ds[3]
    assert set(item) == {"image", "mask", "index"}
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["mask"].shape == (SIZE, SIZE) and item["mask"].dtype == torch.int64
    assert item["index"] == 3
    np.testing.assert_allclose(item["image"].numpy(), ds.images[3].transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert ds.num_classes == 6 and ds.class_names == list(SCENE_CLASSES) and ds.ignore_index == 255
    assert ds.thing_classes == [3, 4, 5] and ds.background_index == 0
    assert ds.class_names[ds.background_index] not in [ds.class_names[i] for i in ds.thing_classes]


def test_train_and_val_come_from_different_seeds() -> None:
    train = ScenesDataset("train", n=8, size=SIZE, seed=0)
    val = ScenesDataset("val", n=8, size=SIZE, seed=0)
    assert not np.array_equal(train.images, val.images)
    assert not np.array_equal(ScenesDataset("train", n=8, size=SIZE, seed=1).images, train.images)
    with pytest.raises(DataError, match="unknown scenes split"):
        ScenesDataset("test", n=8, size=SIZE)


def test_unlabeled_samples_have_no_mask_and_indices_select_scenes() -> None:
    ds = ScenesDataset("train", n=12, size=SIZE, labeled=False, indices=[7, 2])
    assert len(ds) == 2
    item = ds.sample(0, np.random.default_rng(0))
    assert "mask" not in item and item["index"] == 7
    with pytest.raises(DataError, match="out of range"):
        ScenesDataset("train", n=12, size=SIZE, indices=[12])
    with pytest.raises(IndexError):
        ds.sample(2, None)


def test_augmentation_is_applied_only_with_a_generator_and_is_deterministic() -> None:
    ds = ScenesDataset("train", n=6, size=SIZE, transform=SegAugment(crop_size=32, scale=(0.75, 1.5)))
    plain = ds[1]
    assert plain["image"].shape == (3, SIZE, SIZE)  # evaluation: no augmentation
    a = ds.sample(1, np.random.default_rng(11))
    b = ds.sample(1, np.random.default_rng(11))
    c = ds.sample(1, np.random.default_rng(12))
    assert a["image"].shape == (3, 32, 32) and a["mask"].shape == (32, 32)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["mask"], c["mask"])
    values = set(torch.unique(a["mask"]).tolist())
    assert values <= set(range(6)) | {255}
