"""The paper's VOC splits: ``voc_1464`` labels VOC's own ``ImageSets/Segmentation/train.txt`` and leaves the rest of
``trainaug`` unlabeled; a labeled list is a file or the name of a VOC split (checked on a tiny fake VOC tree)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewlabels.data.base import DataError
from fewlabels.data.registry import load_segmentation
from fewlabels.data.segmentation import SegmentationOptions
from fewlabels.data.voc import resolve_split_list
from fewlabels.methods.cct import CCTConfig
from fewlabels.registry import load_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "cct"
TRAIN = ["2007_000032", "2007_000039", "2007_000063"]  # VOC's "train" (the 1,464 of the real dataset)
EXTRA = ["2008_000123", "2008_000456", "2009_000789", "2010_000001"]  # the rest of "trainaug"
VAL = ["2011_000002"]


def make_voc_tree(root: Path) -> Path:
    """JPEGImages, SegmentationClassAug masks and the split lists train / trainaug / val."""
    for k, ident in enumerate(TRAIN + EXTRA + VAL):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 32, 3), 20 * k, dtype=np.uint8)).save(root / "JPEGImages" / f"{ident}.jpg")
        Image.fromarray(np.full((24, 32), k % 21, dtype=np.uint8), mode="L").save(
            root / "SegmentationClassAug" / f"{ident}.png"
        )
    split_dir = root / "ImageSets" / "Segmentation"
    split_dir.mkdir(parents=True)
    (split_dir / "train.txt").write_text("\n".join(TRAIN) + "\n")
    # trainaug interleaves the train ids with the others, as the real list does.
    (split_dir / "trainaug.txt").write_text("\n".join([EXTRA[0], *TRAIN, *EXTRA[1:]]) + "\n")
    (split_dir / "val.txt").write_text("\n".join(VAL) + "\n")
    return root


def test_voc_1464_labels_vocs_train_list_and_leaves_the_rest_of_trainaug_unlabeled(tmp_path: Path) -> None:
    root = make_voc_tree(tmp_path / "VOC2012")
    cfg = load_config(str(CONFIGS / "voc_1464.yaml"), [f"data.root={root}"])
    assert isinstance(cfg, CCTConfig)
    assert cfg.data.labeled_list == "train" and cfg.data.train_split == "trainaug"
    data = load_segmentation(cfg.data.dataset, cfg.data.options())
    assert list(data.labeled.ids) == TRAIN  # type: ignore[attr-defined]
    assert sorted(data.unlabeled.ids) == sorted(EXTRA)  # type: ignore[attr-defined]
    assert len(data.val) == 1
    item = data.labeled.sample(0, np.random.default_rng(0))
    assert "mask" in item and "mask" not in data.unlabeled.sample(0, np.random.default_rng(0))


def test_a_labeled_list_is_a_file_or_a_split_name(tmp_path: Path) -> None:
    root = make_voc_tree(tmp_path / "VOC2012")
    split_dir = root / "ImageSets" / "Segmentation"
    assert resolve_split_list(root, "train") == split_dir / "train.txt"
    assert resolve_split_list(root, "train.txt") == split_dir / "train.txt"
    # A list file of path pairs (CCT / UniMatch style) with explicit unlabeled list.
    pairs = tmp_path / "2_labeled.txt"
    pairs.write_text("".join(f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in TRAIN[:2]))
    rest = tmp_path / "2_unlabeled.txt"
    rest.write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in EXTRA[:2]))
    assert resolve_split_list(root, str(pairs)) == pairs
    options = SegmentationOptions(
        root=str(root), labeled_list=str(pairs), unlabeled_list=str(rest), train_split="trainaug", crop_size=16
    )
    data = load_segmentation("voc", options)
    assert list(data.labeled.ids) == TRAIN[:2]  # type: ignore[attr-defined]
    assert list(data.unlabeled.ids) == EXTRA[:2]  # type: ignore[attr-defined]
    with pytest.raises(DataError, match="neither a file nor a VOC split"):
        resolve_split_list(root, "train_1464")


@pytest.mark.parametrize("count", [92, 183, 366, 732])
def test_every_voc_config_names_its_split_source_and_itself(count: int) -> None:
    text = (CONFIGS / f"voc_{count}.yaml").read_text()
    header = text[: text.index("method: cct")]
    assert f"configs/cct/voc_{count}.yaml" in header and "voc_1464.yaml" not in header
    assert "seeded draw" in header and f"UniMatch/splits/pascal/{count}/labeled.txt" in header
    cfg = load_config(str(CONFIGS / f"voc_{count}.yaml"), ["data.root=/path/to/voc"])
    assert isinstance(cfg, CCTConfig)
    assert cfg.data.labeled == count and not cfg.data.labeled_list
