"""`fewlabels data check` backend: the dataset registry, plugin loading and the segmentation checkers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewlabels.data import check, registry
from fewlabels.data.base import DataError
from fewlabels.data.check import check_dataset
from fewlabels.data.common import CheckReport
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

H, W = 4, 6
IDS = ["2007_000032", "2007_000039", "2008_000123"]


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def make_voc(root: Path) -> None:
    for k, ident in enumerate(IDS):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 60 * k, dtype=np.uint8)).save(root / "JPEGImages" / f"{ident}.jpg")
        mask = np.full((H, W), 255, dtype=np.uint8)
        mask[1:-1, 1:-1] = k + 1
        img = Image.fromarray(mask)
        img.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
        (root / "SegmentationClass").mkdir(exist_ok=True)
        img.save(root / "SegmentationClass" / f"{ident}.png")
    split_dir = root / "ImageSets" / "Segmentation"
    split_dir.mkdir(parents=True)
    (split_dir / "train.txt").write_text("\n".join(IDS[:2]) + "\n")
    (split_dir / "val.txt").write_text(IDS[2] + "\n")


def test_voc_check_counts_everything(tmp_path: Path) -> None:
    make_voc(tmp_path)
    report = check_dataset("voc", tmp_path)
    assert report.ok and report.problems == []
    assert report.kind == "voc" and report.root == str(tmp_path)
    assert report.counts == {
        "images": 3,
        "masks (SegmentationClass)": 3,
        "split train": 2,
        "split val": 1,
        "masks sampled": 3,
    }
    text = report.format()
    assert text.splitlines()[0] == f"voc dataset at {tmp_path}: OK"
    assert "split train" in text and "problems" not in text


def test_voc_check_reports_missing_image_and_mask_paths(tmp_path: Path) -> None:
    make_voc(tmp_path)
    (tmp_path / "JPEGImages" / f"{IDS[1]}.jpg").unlink()
    (tmp_path / "SegmentationClass" / f"{IDS[2]}.png").unlink()
    report = check_dataset("voc", tmp_path)
    assert not report.ok and len(report.problems) == 2
    assert str(tmp_path / "JPEGImages" / f"{IDS[1]}.jpg") in report.problems[0]
    assert "1 of 2 images listed in train.txt" in report.problems[0]
    assert str(tmp_path / "SegmentationClass" / f"{IDS[2]}.png") in report.problems[1]
    assert report.counts["images"] == 2
    assert "2 problem(s)" in report.format()


def test_voc_check_broken_layout_and_bad_mask_values(tmp_path: Path) -> None:
    report = check_dataset("voc", tmp_path / "absent")
    assert not report.ok and report.problems == [f"dataset root folder not found: {tmp_path / 'absent'}"]
    make_voc(tmp_path)
    write_png(tmp_path / "SegmentationClass" / f"{IDS[0]}.png", np.full((H, W), 40))
    report = check_dataset("voc", tmp_path)
    assert not report.ok
    assert any(f"{IDS[0]}.png" in p and "40" in p for p in report.problems)
    for folder in ("JPEGImages", "ImageSets"):
        for path in sorted((tmp_path / folder).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (tmp_path / folder).rmdir()
    report = check_dataset("voc", tmp_path)
    assert f"image folder not found: {tmp_path / 'JPEGImages'}" in report.problems[0]
    assert report.problems[1] == f"split list folder not found: {tmp_path / 'ImageSets' / 'Segmentation'}"


def test_cityscapes_check_counts_and_flags_missing_annotations(tmp_path: Path) -> None:
    for city, frame in [("aachen", "000000_000019"), ("bremen", "000001_000019")]:
        stem = f"{city}_{frame}"
        write_png(tmp_path / f"leftImg8bit/train/{city}/{stem}_leftImg8bit.png", np.zeros((2, 3, 3)))
    write_png(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", np.full((2, 3), 26))
    report = check_dataset("cityscapes", tmp_path)
    assert report.counts == {"train images": 2, "train annotations": 1, "masks sampled": 1}
    assert len(report.problems) == 1
    assert "bremen_000001_000019_gtFine_labelIds.png" in report.problems[0]
    write_png(tmp_path / "gtFine/train/bremen/bremen_000001_000019_gtFine_labelTrainIds.png", np.full((2, 3), 19))
    report = check_dataset("cityscapes", tmp_path)
    assert report.counts["train annotations"] == 2
    assert len(report.problems) == 1 and "labelTrainIds.png" in report.problems[0] and "19" in report.problems[0]


def test_seg_folder_check_counts_and_orphan_masks(tmp_path: Path) -> None:
    for name in "abc":
        write_png(tmp_path / "images" / f"{name}.png", np.zeros((H, W, 3)))
    write_png(tmp_path / "masks" / "a.png", np.ones((H, W)))
    write_png(tmp_path / "masks" / "b.png", np.full((H, W), 2))
    (tmp_path / "classes.txt").write_text("x\ny\nz\n")
    report = check_dataset("seg-folder", tmp_path)
    assert report.ok
    assert report.counts == {
        "images": 3,
        "images decoded": 3,
        "classes (classes.txt)": 3,
        "masks": 2,
        "labeled images": 2,
        "images without a mask": 1,
        "masks sampled": 2,
        "largest class id in sampled masks": 2,
    }
    write_png(tmp_path / "masks" / "zz.png", np.ones((H, W)))
    write_png(tmp_path / "masks" / "b.png", np.full((H - 1, W), 2))
    report = check_dataset("seg-folder", tmp_path)
    assert str(tmp_path / "masks" / "zz.png") in report.problems[0]
    assert f"is {W}x{H}" in report.problems[1] and f"is {W}x{H - 1}" in report.problems[1]


@pytest.mark.parametrize("kind", ["seg-folder", "image-folder"])
def test_folder_checkers_report_a_missing_or_empty_images_folder_and_an_empty_classes_file(
    kind: str, tmp_path: Path
) -> None:
    report = check_dataset(kind, tmp_path)
    assert len(report.problems) == 1 and f"image folder not found: {tmp_path / 'images'}" in report.problems[0]
    assert "Expected layout:" in report.problems[0] and "images" not in report.counts
    (tmp_path / "images").mkdir()
    report = check_dataset(kind, tmp_path)
    assert f"no images in {tmp_path / 'images'}" in report.problems and report.counts["images"] == 0
    write_png(tmp_path / "images" / "a.png", np.zeros((H, W, 3)))
    write_png(tmp_path / "masks" / "a.png", np.ones((H, W)))
    (tmp_path / "classes.txt").write_text("\n\n")
    report = check_dataset(kind, tmp_path)
    assert report.problems == [f"{tmp_path / 'classes.txt'} names no class"]
    assert report.counts["images"] == 1 and report.counts["classes (classes.txt)"] == 0
    (tmp_path / "classes.txt").write_text("x\ny\n")
    report = check_dataset(kind, tmp_path)
    assert report.ok and report.counts["classes (classes.txt)"] == 2


def test_unknown_kind_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        check_dataset("vco", tmp_path)
    message = str(err.value)
    assert "unknown dataset kind 'vco'" in message and "Did you mean 'voc'?" in message
    assert "cityscapes" in message and "seg-folder" in message
    with pytest.raises(DataError) as err:
        check_dataset("zzzzzzzz", tmp_path)
    assert "Did you mean" not in str(err.value)


def test_register_checker_and_plugin_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "DATASETS", dict(registry.DATASETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fewlabels_toy_plugin.py").write_text(
        "from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset\n"
        "def check_toy(root, report):\n"
        "    report.counts['files'] = len(list(root.glob('*.py')))\n"
        "    raise OSError('disk hiccup')\n"
        "register_dataset(DatasetSpec('toy', 'a toy kind', check_toy, DatasetMetadata(), text=print))\n"
    )
    (tmp_path / "fewlabels_broken_plugin.py").write_text("import fewlabels_no_such_dependency\n")
    try:
        monkeypatch.setattr(registry, "PLUGIN_MODULES", ("fewlabels_absent_plugin", "fewlabels_toy_plugin"))
        assert "toy" in check.available_kinds() and "voc" in check.available_kinds()
        report = check_dataset("toy", tmp_path)
        assert report.counts == {"files": 2} and report.problems == ["disk hiccup"] and not report.ok
        monkeypatch.setattr(registry, "PLUGIN_MODULES", ("fewlabels_broken_plugin",))
        with pytest.raises(ModuleNotFoundError, match="fewlabels_no_such_dependency"):
            check.available_kinds()
    finally:
        for name in ("fewlabels_toy_plugin", "fewlabels_broken_plugin"):
            sys.modules.pop(name, None)

    def other(root: Path, report: CheckReport) -> None:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetSpec("voc", "again", other, DatasetMetadata(), text=print))
