"""The embedded few-shot benchmark ``glyphs``: letters of five scripts in matplotlib's DejaVu faces."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from fewlabels.data.base import DataError
from fewlabels.data.glyphs import (
    GLYPH_SPLITS,
    GlyphsDataset,
    dejavu_faces,
    generate_glyphs,
    glyph_classes,
    render_glyph,
)


def test_about_twelve_faces_are_used() -> None:
    faces = dejavu_faces()
    assert 10 <= len(faces) <= 14
    assert all(p.name.startswith("DejaVu") and "Display" not in p.name for p in faces)


def test_splits_are_disjoint_scripts_with_base_largest() -> None:
    classes = {split: glyph_classes(split) for split in GLYPH_SPLITS}
    sizes = {split: len(c) for split, c in classes.items()}
    assert sizes["base"] > sizes["val"] and sizes["base"] > sizes["novel"]
    assert sizes["novel"] >= 20 and sizes["val"] >= 20
    assert sizes == {"base": 170, "val": 43, "novel": 34}  # DejaVu 2.35, see the module docstring
    for a in GLYPH_SPLITS:
        assert len(set(classes[a])) == len(classes[a])
        for b in GLYPH_SPLITS:
            if a < b:
                assert not set(classes[a]) & set(classes[b])
    scripts = {split: {unicodedata.name(c).split()[0] for c in chars} for split, chars in classes.items()}
    assert scripts == {"base": {"LATIN", "CYRILLIC", "ARMENIAN"}, "val": {"GEORGIAN"}, "novel": {"GREEK"}}


def test_homoglyphs_of_kept_letters_are_dropped() -> None:
    base, novel = set(glyph_classes("base")), set(glyph_classes("novel"))
    assert "A" in base and "\u0391" not in novel and "\u0410" not in base  # Latin A kept, its twins not
    assert "\u0393" in novel and "\u0413" not in base  # Greek Gamma kept; the identical Cyrillic Ge dropped
    assert "\u0394" in novel and "\u0416" in base  # letters without a twin stay


def test_generation_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEWLABELS_CACHE", str(tmp_path / "a"))
    first = generate_glyphs("novel", image_size=24, per_class=3, seed=1)
    monkeypatch.setenv("FEWLABELS_CACHE", str(tmp_path / "b"))
    again = generate_glyphs("novel", image_size=24, per_class=3, seed=1)
    np.testing.assert_array_equal(first["images"], again["images"])
    np.testing.assert_array_equal(first["labels"], again["labels"])
    other = generate_glyphs("novel", image_size=24, per_class=3, seed=2)
    assert not np.array_equal(first["images"], other["images"])
    assert os.listdir(tmp_path / "b")  # written to the cache


def test_dataset_counts_labels_and_images() -> None:
    ds = GlyphsDataset("novel", image_size=32, per_class=24, seed=0)
    assert ds.num_classes == len(ds.class_names) == 34
    assert len(ds) == 34 * 24 and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ds.labels), np.full(34, 24))
    assert ds.images.shape == (34 * 24, 32, 32) and ds.images.dtype == np.uint8
    ink = (ds.images > 127).reshape(len(ds), -1).mean(1)
    assert ink.min() > 0.01 and ink.max() < 0.6  # every image shows a letter, none is filled
    # images of one class differ across faces and affines; each class uses every face at 24 per class
    first_class = ds.images[ds.labels == 0].reshape(24, -1)
    assert len({row.tobytes() for row in first_class}) == 24
    assert set(ds.faces[ds.labels == 0].tolist()) == set(range(len(dejavu_faces())))
    assert ds.scripts == ["greek"] * 34


def test_samples_follow_the_protocol_and_transform_needs_a_generator() -> None:
    calls = []

    def invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        calls.append(image.shape)
        return 255 - image

    ds = GlyphsDataset("val", image_size=20, per_class=2, seed=0, transform=invert)
    item = ds[5]
    assert set(item) == {"image", "label", "index"} and item["index"] == 5
    assert item["image"].shape == (3, 20, 20) and item["image"].dtype == torch.float32
    assert torch.equal(item["image"][0], item["image"][2])  # grey replicated to 3 channels
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 2
    assert calls == []
    augmented = ds.sample(5, np.random.default_rng(0))
    assert calls == [(20, 20, 3)]
    assert torch.allclose(augmented["image"], 1.0 - item["image"], atol=1e-6)


def test_render_glyph_places_ink_inside_the_canvas() -> None:
    letter = render_glyph("A", 40)
    assert letter.shape == (40, 40) and letter.max() == 255
    centred = render_glyph("T", 40, centred=True) > 127
    rows, cols = np.flatnonzero(centred.any(1)), np.flatnonzero(centred.any(0))
    assert abs((rows[0] + rows[-1]) / 2 - 19.5) <= 1 and abs((cols[0] + cols[-1]) / 2 - 19.5) <= 1


def test_invalid_arguments_raise() -> None:
    with pytest.raises(DataError, match="unknown glyphs split"):
        GlyphsDataset("test")
    with pytest.raises(DataError, match="per_class"):
        generate_glyphs("novel", per_class=0)
    with pytest.raises(DataError, match="image_size"):
        generate_glyphs("novel", image_size=4)
