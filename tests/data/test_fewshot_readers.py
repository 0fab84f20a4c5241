import json
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from fewlabels.data.base import DataError
from fewlabels.data.fewshot import read_pickle
from fewlabels.data.mini_imagenet import MINI_PICKLES
from fewlabels.data.registry import load_fewshot


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _py2_pickle(data: np.ndarray, labels) -> bytes:
    """A dict pickled the way Python 2 + numpy wrote RFS's mini-ImageNet files (byte strings, latin-1
    needed)."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING: a Python 2 str
        return b"U" + bytes([len(b)]) + b

    def i(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)

    raw = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    shape = b"(" + b"".join(i(n) for n in data.shape) + b"t"
    arr = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + i(0)
        + b"\x85"
        + s(b"b")
        + b"\x87R"
        + b"("
        + i(1)
        + shape
        + b"cnumpy\ndtype\n"
        + s(b"u1")
        + b"\x89\x88\x87R"
        + b"("
        + i(3)
        + s(b"|")
        + b"NNN"
        + i(-1)
        + i(-1)
        + i(0)
        + b"tb"
        + b"\x89"
        + b"T"
        + struct.pack("<I", len(raw))
        + raw
        + b"tb"
    )
    lab = b"](" + b"".join(i(int(n)) for n in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + arr + s(b"labels") + lab + b"u."


def test_mini_imagenet_rfs_pickles_including_python2_latin1_ones(tmp_path):
    train = _images(6, 84)
    with (tmp_path / MINI_PICKLES["train"]).open("wb") as fh:
        pickle.dump({"data": train, "labels": [0, 0, 1, 1, 2, 2]}, fh)
    test = _images(4, 84, seed=1)
    raw = _py2_pickle(test, [80, 80, 95, 95])
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)
    (tmp_path / MINI_PICKLES["test"]).write_bytes(raw)
    ds = load_fewshot("mini-imagenet", tmp_path, "train")
    assert len(ds) == 6 and ds.num_classes == 3
    item = ds[3]
    assert item["image"].shape == (3, 84, 84) and int(item["label"]) == 1
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy() * 255, train[3], atol=1e-3)
    novel = load_fewshot("mini-imagenet", tmp_path, "novel")
    assert novel.labels.tolist() == [0, 0, 1, 1] and novel.class_names == ["80", "95"]
    np.testing.assert_allclose(novel[2]["image"].permute(1, 2, 0).numpy() * 255, test[2], atol=1e-3)


def test_mini_imagenet_csv_and_images_layout(tmp_path):
    (tmp_path / "images").mkdir()
    rows = ["filename,label"]
    for k, wnid in enumerate(["n01532829", "n01532829", "n02110063"]):
        Image.fromarray(_images(1, 100, seed=k)[0]).save(tmp_path / "images" / f"img{k}.jpg")
        rows.append(f"img{k}.jpg,{wnid}")
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n")
    ds = load_fewshot("mini-imagenet", tmp_path, "val")
    assert ds.class_names == ["n01532829", "n02110063"] and ds.labels.tolist() == [0, 0, 1]
    assert ds[0]["image"].shape == (3, 84, 84)


def test_mini_imagenet_missing_files_name_both_layouts(tmp_path):
    with pytest.raises(DataError, match=r"(?s)miniImageNet_category_split_val.pickle.*train,val,test\}.csv"):
        load_fewshot("mini-imagenet", tmp_path, "val")


def test_tiered_imagenet_npz_and_label_specific(tmp_path):
    images = _images(5, 84)
    np.savez(tmp_path / "train_images.npz", images=images)
    with (tmp_path / "train_labels.pkl").open("wb") as fh:
        pickle.dump({"label_specific": np.array([3, 3, 7, 7, 9]), "label_general": np.zeros(5)}, fh)
    ds = load_fewshot("tiered-imagenet", tmp_path, "train")
    assert ds.labels.tolist() == [0, 0, 1, 1, 2]
    np.testing.assert_allclose(ds[4]["image"].permute(1, 2, 0).numpy() * 255, images[4], atol=1e-3)
    with pytest.raises(DataError, match="val_images.npz"):
        load_fewshot("tiered-imagenet", tmp_path, "val")


@pytest.mark.parametrize("kind,name", [("cifar-fs", "test.pickle"), ("fc100", "FC100_test.pickle")])
def test_cifar_fs_and_fc100_pickles(tmp_path, kind, name):
    images = _images(4, 32)
    with (tmp_path / name).open("wb") as fh:
        pickle.dump({"data": images, "labels": [10, 11, 10, 11]}, fh)
    ds = load_fewshot(kind, tmp_path, "test")
    assert ds[1]["image"].shape == (3, 32, 32) and ds.labels.tolist() == [0, 1, 0, 1]
    assert load_fewshot(kind, tmp_path, "test", image_size=84)[0]["image"].shape == (3, 84, 84)


def _folder(tmp_path, split_file: str, content: str):
    for cls in ["cat", "dog", "emu"]:
        (tmp_path / cls).mkdir()
        for k in range(2):
            Image.fromarray(_images(1, 40, seed=k)[0]).save(tmp_path / cls / f"{k}.png")
    (tmp_path / split_file).write_text(content)


def test_class_per_folder_tree_with_a_json_split_file(tmp_path):
    _folder(tmp_path, "splits.json", json.dumps({"base": ["cat", "dog"], "val": [], "novel": ["emu"]}))
    base = load_fewshot("folder", tmp_path, "train", image_size=32)
    assert base.class_names == ["cat", "dog"] and len(base) == 4 and base[0]["image"].shape == (3, 32, 32)
    assert load_fewshot("folder", tmp_path, "test").class_names == ["emu"]
    with pytest.raises(DataError, match="names no classes for split 'val'"):
        load_fewshot("folder", tmp_path, "val")


def test_class_per_folder_tree_with_a_text_split_file_and_a_missing_class(tmp_path):
    _folder(tmp_path, "split.txt", "train cat\ntrain dog\ntest emu\ntest yak\n")
    assert load_fewshot("folder", tmp_path, "train", split_file=tmp_path / "split.txt").num_classes == 2
    with pytest.raises(DataError, match="yak"):
        load_fewshot("folder", tmp_path, "test", split_file=tmp_path / "split.txt")


def test_corrupt_pickle_and_undecodable_image_are_reported_with_their_path(tmp_path):
    bad = tmp_path / "train.pickle"
    bad.write_bytes(b"\x80\x02}(")
    with pytest.raises(DataError, match="train.pickle"):
        read_pickle(bad)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "0.png").write_bytes(b"not an image")
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["cat"]}))
    ds = load_fewshot("folder", tmp_path, "train")
    with pytest.raises(DataError, match="0.png"):
        ds[0]


def test_data_check_kinds_are_registered_and_count_images(tmp_path):
    from fewlabels.data.check import available_kinds, check_dataset

    for kind in ["mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "fewshot-folder"]:
        assert kind in available_kinds()
    for split in ["train", "val", "test"]:
        with (tmp_path / f"{split}.pickle").open("wb") as fh:
            pickle.dump({"data": _images(40, 32), "labels": [0] * 20 + [1] * 20}, fh)
    report = check_dataset("cifar-fs", tmp_path)
    assert report.ok and report.counts["train images"] == 40 and report.counts["test classes"] == 2
    (tmp_path / "empty").mkdir()
    empty = check_dataset("fc100", tmp_path / "empty")
    assert not empty.ok and any("FC100_train.pickle" in p for p in empty.problems)
