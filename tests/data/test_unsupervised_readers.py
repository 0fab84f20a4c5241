"""COCO-Stuff-3/15, Potsdam-3/6 and image-folder readers on tiny fixtures written in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fewlabels.data.base import DataError
from fewlabels.data.cocostuff import FINE_TO_COARSE, CocoStuffDataset, cocostuff_label_table
from fewlabels.data.image_folder import ImageFolderDataset
from fewlabels.data.potsdam import PotsdamDataset
from fewlabels.data.registry import build_unsupervised_data

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "spec" / "data" / "cocostuff_fine_to_coarse.json"


def _coco(root: Path, split: str = "train2017", ids: tuple[str, ...] = ("000000000009", "000000000025")) -> Path:
    for sub in ("images", "annotations", "curated"):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for i in ids:
        Image.fromarray(g.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
        fine = np.full((60, 90), 255, dtype=np.uint8)
        fine[:20] = 156  # sky-other -> sky-stuff
        fine[20:40] = 123  # grass -> plant-stuff
        fine[40:, :45] = 125  # gravel -> ground-stuff
        fine[40:, 45:] = 0  # person: a thing, ignored in both variants
        Image.fromarray(fine).save(root / "annotations" / split / f"{i}.png")
    for name in ("Coco164kFew_Stuff_6", "Coco164kFull_Stuff_Coarse_7"):
        (root / "curated" / split / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


def _potsdam(root: Path) -> Path:
    (root / "imgs").mkdir(parents=True)
    (root / "gt").mkdir()
    g = np.random.default_rng(0)
    lists = {"unlabelled_train": ["u1"], "labelled_train": ["a1"], "labelled_test": ["t1", "t2"]}
    for name, ids in lists.items():
        (root / f"{name}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            scipy.io.savemat(root / "imgs" / f"{i}.mat", {"img": g.integers(0, 255, (24, 24, 4), dtype=np.uint8)})
            if name != "unlabelled_train":
                gt = np.tile(np.arange(6, dtype=np.int32).repeat(4), (24, 1))  # columns of classes 0..5
                scipy.io.savemat(root / "gt" / f"{i}.mat", {"gt": gt})
    return root


def test_fine_to_coarse_table_matches_the_shared_json():
    if not SHARED.is_file():
        pytest.skip(f"shared spec data not found at {SHARED}")
    data = json.loads(SHARED.read_text())
    assert list(FINE_TO_COARSE) == [data["fine"][str(i)]["coarse_index"] for i in range(182)]


def test_cocostuff_label_tables_follow_iic_classes():
    t3, t15 = cocostuff_label_table(3), cocostuff_label_table(15)
    assert (t3[156], t3[123], t3[125], t3[0], t3[255]) == (0, 1, 2, 255, 255)  # sky, plant, ground, thing
    assert (t15[156], t15[123], t15[125], t15[0]) == (11, 10, 9, 255)  # coarse 23, 22, 21 minus 12
    assert sorted(set(t15[:182].tolist()) - {255}) == list(range(15))


def test_cocostuff_reader_rescales_crops_and_maps_labels(tmp_path):
    root = _coco(tmp_path / "coco")
    ds = CocoStuffDataset(root, "train2017", variant=3, input_size=16, scale=0.5)
    assert len(ds) == 2 and ds.class_names == ["sky", "plant", "ground"]
    item = ds[0]  # centre crop of the 30 x 45 rescaled image: rows 7..22, columns 14..29
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
    mask = item["mask"].numpy()
    assert (mask[:3] == 0).all() and (mask[3:13] == 1).all()  # sky rows 0..9, plant rows 10..19 rescaled
    assert (mask[13:, :6] == 2).all() and (mask[13:, -6:] == 255).all()  # ground left, person (a thing) right
    train = ds.sample(1, np.random.default_rng(0))
    assert train["image"].shape == (3, 16, 16)
    assert set(np.unique(train["mask"].numpy())) <= {0, 1, 2, 255}
    bottom_right = CocoStuffDataset(root, "train2017", variant=15, input_size=30, scale=0.5)[0]["mask"].numpy()
    assert set(np.unique(bottom_right)) == {9, 10, 11, 255}


def test_cocostuff_reports_missing_files_and_bad_labels(tmp_path):
    root = _coco(tmp_path / "coco")
    with pytest.raises(DataError, match="curated"):
        CocoStuffDataset(root, "val2017", variant=3)
    bad = np.full((60, 90), 200, dtype=np.uint8)  # 200 is neither a fine label (0..181) nor 255
    Image.fromarray(bad).save(root / "annotations" / "train2017" / "000000000009.png")
    with pytest.raises(DataError, match="200"):
        CocoStuffDataset(root, "train2017", variant=3)[0]
    (root / "images" / "train2017" / "000000000025.jpg").unlink()
    with pytest.raises(DataError, match="000000000025"):
        CocoStuffDataset(root, "train2017", variant=3)[1]


@pytest.mark.parametrize("variant,expected", [(6, list(range(6))), (3, [0, 1, 2, 2, 0, 1])])
def test_potsdam_reader_reads_mat_files_and_merges_classes(tmp_path, variant, expected):
    root = _potsdam(tmp_path / "potsdam")
    ds = PotsdamDataset(root, ["labelled_test"], variant=variant, input_size=24)
    item = ds[0]
    assert item["image"].shape == (4, 24, 24)
    raw = scipy.io.loadmat(root / "imgs" / "t1.mat")["img"]
    np.testing.assert_allclose(item["image"][3].numpy(), raw[:, :, 3] / 255.0, atol=1e-6)  # IR kept
    assert item["mask"][0, ::4].tolist() == expected
    train = PotsdamDataset(root, variant=variant, input_size=16)
    assert len(train) == 4
    unlabelled = train.sample(0, np.random.default_rng(1))  # unlabelled_train has no gt: all ignored
    assert unlabelled["image"].shape == (4, 16, 16) and bool((unlabelled["mask"] == 255).all())


def test_potsdam_rejects_wrong_keys_and_classes(tmp_path):
    root = _potsdam(tmp_path / "potsdam")
    scipy.io.savemat(root / "gt" / "t1.mat", {"labels": np.zeros((24, 24), dtype=np.int32)})
    with pytest.raises(DataError, match="no key 'gt'"):
        PotsdamDataset(root, ["labelled_test"])[0]
    scipy.io.savemat(root / "gt" / "t1.mat", {"gt": np.full((24, 24), 7, dtype=np.int32)})
    with pytest.raises(DataError, match=r"\[7\]"):
        PotsdamDataset(root, ["labelled_test"])[0]
    with pytest.raises(DataError, match="labelled_val"):
        PotsdamDataset(root, ["labelled_val"])


def test_image_folder_with_optional_masks(tmp_path):
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    ds = ImageFolderDataset(root, input_size=8)
    assert len(ds) == 2 and "mask" not in ds[0] and ds[0]["image"].shape == (3, 8, 8)
    (root / "masks").mkdir()
    Image.fromarray(np.ones((10, 12), dtype=np.uint8)).save(root / "masks" / "a.png")
    with pytest.raises(DataError, match="no mask"):
        ImageFolderDataset(root, input_size=8)
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(root / "masks" / "b.png")
    (root / "classes.txt").write_text("dark\nlight\n")
    data = build_unsupervised_data("image-folder", str(root), input_size=8)
    assert data.num_classes == 2 and data.class_names == ["dark", "light"]
    assert data.eval[0]["mask"].unique().tolist() == [1]


def test_data_check_registers_cocostuff_and_potsdam(tmp_path):
    from fewlabels.data.check import check_dataset

    report = check_dataset("potsdam3", _potsdam(tmp_path / "potsdam"))
    assert report.ok, report.format()
    assert report.counts["labelled_test images"] == 2
    coco = _coco(tmp_path / "coco")
    report = check_dataset("cocostuff3", coco)
    assert not report.ok  # val2017 lists are missing
    assert report.counts["train2017 COCO-Stuff-3 images"] == 2
    assert any("val2017" in p for p in report.problems)
