"""Segmentation readers on tiny fixtures written in the real on-disk layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.data.base import DataError
from fewlabels.data.cityscapes import CITYSCAPES_CLASS_NAMES, CityscapesSegmentation, cityscapes_label_to_train_ids
from fewlabels.data.seg_folder import FolderSegmentation
from fewlabels.data.voc import VOC_CLASS_NAMES, VOCSegmentation, parse_list_entry

H, W = 6, 8


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved), 256 RGB triples."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def save_palette_png(path: Path, mask: np.ndarray) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="L")
    img.putpalette(voc_palette())
    assert img.mode == "P"
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def save_image(path: Path, value: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    arr = np.zeros((*size, 3), dtype=np.uint8)
    arr[..., 0] = value
    arr[..., 1] = 255 - value
    arr[..., 2] = 100
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def bordered_mask(cls: int) -> np.ndarray:
    mask = np.full((H, W), 255, dtype=np.uint8)
    mask[1:-1, 1:-1] = 0
    mask[2:4, 2:6] = cls
    return mask


VOC_IDS = ["2007_000032", "2007_000039", "2008_000123"]


def make_voc(root: Path) -> dict[str, np.ndarray]:
    """3 images, palette masks with 255 borders; train = first two ids, val = last; Aug masks hold k + 10."""
    masks = {}
    for k, ident in enumerate(VOC_IDS):
        save_image(root / "JPEGImages" / f"{ident}.jpg", 40 * (k + 1))
        masks[ident] = bordered_mask(k + 1)
        save_palette_png(root / "SegmentationClass" / f"{ident}.png", masks[ident])
        aug = np.full((H, W), k + 10, dtype=np.uint8)
        (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
        Image.fromarray(aug, mode="L").save(root / "SegmentationClassAug" / f"{ident}.png")
    split_dir = root / "ImageSets" / "Segmentation"
    split_dir.mkdir(parents=True)
    (split_dir / "train.txt").write_text("\n".join(VOC_IDS[:2]) + "\n")
    (split_dir / "val.txt").write_text(VOC_IDS[2] + "\n")
    (split_dir / "trainaug.txt").write_text("\n".join(VOC_IDS) + "\n")
    return masks


def test_voc_reads_palette_indices_not_colours(tmp_path: Path) -> None:
    masks = make_voc(tmp_path)
    ds = VOCSegmentation(tmp_path, split="train")
    assert len(ds) == 2 and ds.ids == VOC_IDS[:2]
    assert ds.num_classes == 21 and ds.class_names == list(VOC_CLASS_NAMES) and ds.ignore_index == 255
    item = ds[1]
    assert item["id"] == VOC_IDS[1] and item["index"] == 1
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (H, W)
    assert torch.equal(item["mask"], torch.from_numpy(masks[VOC_IDS[1]]).long())
    assert set(item["mask"].unique().tolist()) == {0, 2, 255}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    # JPEG is lossy, but a flat colour survives within a few levels.
    assert abs(float(item["image"][0].mean()) - 80 / 255) < 0.03
    assert abs(float(item["image"][2].mean()) - 100 / 255) < 0.03


def test_voc_split_list_of_path_pairs_uses_the_named_masks(tmp_path: Path) -> None:
    make_voc(tmp_path)
    list_file = tmp_path / "1464_train_supervised.txt"
    list_file.write_text(
        f"/JPEGImages/{VOC_IDS[2]}.jpg /SegmentationClassAug/{VOC_IDS[2]}.png\n"
        f"/JPEGImages/{VOC_IDS[0]}.jpg /SegmentationClass/{VOC_IDS[0]}.png\n\n"
    )
    ds = VOCSegmentation(tmp_path, ids=list_file)
    assert ds.ids == [VOC_IDS[2], VOC_IDS[0]]
    assert ds[0]["mask"].unique().tolist() == [12]  # from SegmentationClassAug
    assert set(ds[1]["mask"].unique().tolist()) == {0, 1, 255}  # from SegmentationClass
    forced = VOCSegmentation(tmp_path, ids=list_file, use_aug_labels=False)
    assert set(forced[0]["mask"].unique().tolist()) == {0, 3, 255}


def test_voc_trainaug_defaults_to_aug_labels_and_ids_list_overrides_split(tmp_path: Path) -> None:
    make_voc(tmp_path)
    aug = VOCSegmentation(tmp_path, split="trainaug")
    assert [aug[i]["mask"].unique().tolist() for i in range(3)] == [[10], [11], [12]]
    chosen = VOCSegmentation(tmp_path, split="train", ids=[VOC_IDS[2]], use_aug_labels=True)
    assert chosen.ids == [VOC_IDS[2]] and chosen[0]["mask"].unique().tolist() == [12]


def test_parse_list_entry_accepts_ids_names_and_pairs() -> None:
    assert parse_list_entry("2007_000032\n") == ("2007_000032", None, None)
    assert parse_list_entry("  # comment") is None and parse_list_entry("   ") is None
    entry = parse_list_entry("/JPEGImages/a_1.jpg /SegmentationClassAug/a_1.png")
    assert entry == ("a_1", "JPEGImages/a_1.jpg", "SegmentationClassAug/a_1.png")
    assert parse_list_entry("a_1.jpg") == ("a_1", "a_1.jpg", None)


def test_voc_unlabeled_has_no_mask_and_needs_no_mask_file(tmp_path: Path) -> None:
    make_voc(tmp_path)
    (tmp_path / "SegmentationClass" / f"{VOC_IDS[0]}.png").unlink()
    ds = VOCSegmentation(tmp_path, split="train", labeled=False)
    assert len(ds) == 2 and "mask" not in ds[0] and ds[0]["id"] == VOC_IDS[0]
    with pytest.raises(DataError, match=f"SegmentationClass/{VOC_IDS[0]}.png"):
        VOCSegmentation(tmp_path, split="train")


def test_voc_split_id_without_image_names_the_missing_path(tmp_path: Path) -> None:
    make_voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text(f"{VOC_IDS[0]}\n2099_999999\n")
    with pytest.raises(DataError) as err:
        VOCSegmentation(tmp_path, split="train")
    assert str(tmp_path / "JPEGImages" / "2099_999999.jpg") in str(err.value)
    assert "1 of 2" in str(err.value)


def test_voc_missing_split_file_empty_split_and_missing_root(tmp_path: Path) -> None:
    make_voc(tmp_path)
    with pytest.raises(DataError) as err:
        VOCSegmentation(tmp_path, split="nosuch")
    assert "nosuch.txt" in str(err.value) and "Expected layout" in str(err.value)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        VOCSegmentation(tmp_path, split="val")
    with pytest.raises(DataError, match="JPEGImages"):
        VOCSegmentation(tmp_path / "nothere")


def test_transform_runs_only_with_an_rng(tmp_path: Path) -> None:
    masks = make_voc(tmp_path)
    calls = []

    def flip(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator):
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        assert mask is not None and mask.dtype == np.uint8
        calls.append(int(rng.integers(1000)))
        return image[:, ::-1], mask[:, ::-1]

    ds = VOCSegmentation(tmp_path, split="val", transform=flip)
    plain = ds[0]
    assert calls == []
    assert torch.equal(plain["mask"], torch.from_numpy(masks[VOC_IDS[2]]).long())
    flipped = ds.sample(0, np.random.default_rng(0))
    assert len(calls) == 1
    assert torch.equal(flipped["mask"], torch.from_numpy(masks[VOC_IDS[2]][:, ::-1].copy()).long())


def make_cityscapes(root: Path) -> None:
    label_ids = np.array([[7, 26, 0, 33], [24, 4, 255, 11]], dtype=np.uint8)
    for split, city, frame in [("train", "aachen", "000000_000019"), ("train", "bonn", "000001_000019")]:
        stem = f"{city}_{frame}"
        save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 50, size=(2, 4))
        gt = root / "gtFine" / split / city
        gt.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label_ids).save(gt / f"{stem}_gtFine_labelIds.png")
    # bonn also ships labelTrainIds (deliberately different from the mapped labelIds): used as is.
    train_ids = np.array([[3, 3, 255, 18], [0, 1, 2, 5]], dtype=np.uint8)
    Image.fromarray(train_ids).save(root / "gtFine/train/bonn/bonn_000001_000019_gtFine_labelTrainIds.png")
    save_image(root / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png", 10, size=(2, 4))


def test_cityscapes_label_ids_map_to_train_ids(tmp_path: Path) -> None:
    make_cityscapes(tmp_path)
    ds = CityscapesSegmentation(tmp_path, split="train")
    assert ds.ids == ["aachen/aachen_000000_000019", "bonn/bonn_000001_000019"]
    assert ds.num_classes == 19 and ds.class_names == list(CITYSCAPES_CLASS_NAMES)
    assert ds[0]["mask"].tolist() == [[0, 13, 255, 18], [11, 255, 255, 2]]
    assert ds[1]["mask"].tolist() == [[3, 3, 255, 18], [0, 1, 2, 5]]
    assert ds[0]["image"].shape == (3, 2, 4)
    table = cityscapes_label_to_train_ids(np.arange(34, dtype=np.uint8))
    assert table[7] == 0 and table[26] == 13 and table[0] == 255 and table[23] == 10
    assert int((table != 255).sum()) == 19 and sorted(table[table != 255].tolist()) == list(range(19))


def test_cityscapes_missing_annotations_and_unlabeled_split(tmp_path: Path) -> None:
    make_cityscapes(tmp_path)
    with pytest.raises(DataError, match="gtFine"):
        CityscapesSegmentation(tmp_path, split="val")
    unlabeled = CityscapesSegmentation(tmp_path, split="val", labeled=False)
    assert len(unlabeled) == 1 and "mask" not in unlabeled[0]
    (tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError) as err:
        CityscapesSegmentation(tmp_path, split="train")
    assert "aachen_000000_000019_gtFine_labelIds.png" in str(err.value)


def make_folder(root: Path, classes: bool = True) -> None:
    """images a.png, b.png (masked) and c.png (no mask)."""
    for k, name in enumerate("abc"):
        save_image(root / "images" / f"{name}.png", 30 * k)
    (root / "masks").mkdir()
    Image.fromarray(np.array([[0, 1], [2, 255]], dtype=np.uint8).repeat(3, 0).repeat(4, 1)).save(
        root / "masks" / "a.png"
    )
    Image.fromarray(np.full((H, W), 1, dtype=np.uint8)).save(root / "masks" / "b.png")
    if classes:
        (root / "classes.txt").write_text("sky\nroad\n\ncar\n")


def test_folder_labeled_uses_masked_images_and_unlabeled_uses_all(tmp_path: Path) -> None:
    make_folder(tmp_path)
    labeled = FolderSegmentation(tmp_path)
    assert len(labeled) == 2 and labeled.ids == ["a", "b"]
    assert labeled.num_classes == 3 and labeled.class_names == ["sky", "road", "car"]
    assert labeled[0]["mask"][:, 0].tolist() == [0, 0, 0, 2, 2, 2]
    assert labeled[0]["mask"][:, -1].tolist() == [1, 1, 1, 255, 255, 255]
    assert torch.allclose(labeled[1]["image"][0], torch.full((H, W), 30 / 255))
    unlabeled = FolderSegmentation(tmp_path, labeled=False)
    assert len(unlabeled) == 3 and unlabeled.ids == ["a", "b", "c"]
    assert all("mask" not in unlabeled[i] for i in range(3))
    save_image(tmp_path / "unlabeled" / "d.jpg", 5)
    with_extra = FolderSegmentation(tmp_path, labeled=False)
    assert with_extra.ids == ["a", "b", "c", "unlabeled/d"]


def test_folder_infers_classes_and_rejects_binary_255_masks(tmp_path: Path) -> None:
    make_folder(tmp_path, classes=False)
    assert FolderSegmentation(tmp_path).num_classes == 3
    assert FolderSegmentation(tmp_path, labeled=False).num_classes == 3
    with pytest.raises(DataError, match="classes.txt names 3"):
        (tmp_path / "classes.txt").write_text("x\ny\nz\n")
        FolderSegmentation(tmp_path, num_classes=4)
    (tmp_path / "classes.txt").unlink()
    for name in "ab":
        Image.fromarray(np.array([[0, 255]] * H, dtype=np.uint8).repeat(W // 2, 1)).save(tmp_path / f"masks/{name}.png")
    with pytest.raises(DataError, match="only 0 and 255"):
        FolderSegmentation(tmp_path)


def test_folder_out_of_range_mask_value_names_file_and_values(tmp_path: Path) -> None:
    make_folder(tmp_path)
    Image.fromarray(np.array([[0, 7], [9, 255]], dtype=np.uint8)).save(tmp_path / "masks" / "b.png")
    save_image(tmp_path / "images" / "b.png", 0, size=(2, 2))
    ds = FolderSegmentation(tmp_path)
    assert ds[0]["id"] == "a"
    with pytest.raises(DataError) as err:
        ds[1]
    assert str(tmp_path / "masks" / "b.png") in str(err.value) and "7, 9" in str(err.value)


def test_folder_corrupt_image_and_size_mismatch_are_reported(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = FolderSegmentation(tmp_path)
    with pytest.raises(DataError) as err:
        ds[0]
    assert str(tmp_path / "images" / "a.png") in str(err.value)
    save_image(tmp_path / "images" / "b.png", 0, size=(5, 7))
    with pytest.raises(DataError) as err:
        ds[1]
    assert "7x5" in str(err.value) and f"{W}x{H}" in str(err.value)


def test_folder_missing_masks_folder_and_no_labeled_images(tmp_path: Path) -> None:
    save_image(tmp_path / "images" / "a.png", 0)
    with pytest.raises(DataError) as err:
        FolderSegmentation(tmp_path)
    assert str(tmp_path / "masks") in str(err.value) and "Expected layout" in str(err.value)
    only_images = FolderSegmentation(tmp_path, labeled=False)
    assert len(only_images) == 1 and only_images.num_classes is None
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no labeled images"):
        FolderSegmentation(tmp_path)
