"""The dataset registry: every dataset is complete, configs and `data check` use the same names, and a dataset
registered from outside the package is usable by `data check` and by a method's data building."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fewlabels.cli import main
from fewlabels.config import ConfigError, build_config
from fewlabels.data import registry
from fewlabels.data.base import DataError, FewDataset
from fewlabels.data.check import available_kinds, check_dataset
from fewlabels.data.common import CheckReport
from fewlabels.data.registry import (
    FAMILIES,
    DatasetMetadata,
    DatasetSpec,
    dataset_names,
    get_dataset,
    load_segmentation,
    register_dataset,
)
from fewlabels.data.segmentation import SegmentationData, SegmentationOptions, Transform
from fewlabels.methods.ac.config import ACConfig
from fewlabels.methods.cct import CCTConfig, CCTMethod
from fewlabels.methods.relbitfit.config import TextTaskConfig
from fewlabels.methods.scl.config import SCLConfig
from fewlabels.methods.supervised import SupervisedConfig, SupervisedSegmentation

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

#: the config class of each family whose data section names a registered dataset
FAMILY_CONFIGS: dict[str, type] = {"segmentation": SupervisedConfig, "unsupervised": ACConfig, "few-shot": SCLConfig}


def test_every_registered_dataset_has_a_name_a_family_a_checker_and_metadata() -> None:
    names = dataset_names()
    assert {"scenes", "voc", "cityscapes", "seg-folder", "cocostuff3", "potsdam6", "glyphs", "glue"} <= set(names)
    for name in names:
        spec = get_dataset(name)
        assert spec.name == name and spec.description
        assert spec.families and set(spec.families) <= set(FAMILIES)
        assert callable(spec.check)
        assert isinstance(spec.metadata, DatasetMetadata)
        if spec.root != "none":
            assert spec.layout, f"{name} has no layout to show in its error messages"
        if "segmentation" in spec.families or "unsupervised" in spec.families:
            assert spec.metadata.ignore_index == 255 and spec.metadata.in_channels in (3, 4)
        if "few-shot" in spec.families:
            assert spec.metadata.image_size in (32, 84)
    # the classes that used to be hard-coded in the methods come from the metadata
    voc = get_dataset("voc").metadata
    assert voc.num_classes == 21 and voc.things(21) == list(range(1, 21))
    assert get_dataset("cityscapes").metadata.things(19) == list(range(11, 19))
    assert [get_dataset(f"cocostuff{k}").metadata.num_classes for k in (3, 15)] == [3, 15]
    assert get_dataset("potsdam3").metadata.in_channels == 4


def _accepts(config_class: type, name: str) -> bool:
    try:
        build_config(config_class, {"data": {"dataset": name, "root": "/data"}})
    except ConfigError as err:
        assert err.key == "data.dataset", err
        return False
    return True


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_config_names_are_the_data_check_names(family: str) -> None:
    config_class = FAMILY_CONFIGS[family]
    names = dataset_names(family)
    assert set(names) <= set(available_kinds())
    assert all(_accepts(config_class, name) for name in names)
    others = [n for n in dataset_names() if n not in names]
    assert not any(_accepts(config_class, name) for name in others)


def test_text_config_names_are_the_data_check_names() -> None:
    dataset_type = typing.get_type_hints(TextTaskConfig)["dataset"]
    assert set(typing.get_args(dataset_type)) == set(dataset_names("text"))


def test_shipped_configs_name_registered_datasets() -> None:
    from fewlabels.config import read_yaml

    for path in sorted(CONFIGS.rglob("*.yaml")):
        name = read_yaml(path).get("data", {}).get("dataset")
        if name is not None:
            assert name in available_kinds(), f"{path} names the unknown dataset {name!r}"


def test_old_names_resolve_inside_their_family_and_data_check_suggests_the_new_ones(tmp_path: Path) -> None:
    assert get_dataset("folder", "segmentation").name == "seg-folder"
    assert get_dataset("folder", "unsupervised").name == "image-folder"
    assert get_dataset("folder", "few-shot").name == "fewshot-folder"
    assert _accepts(SupervisedConfig, "folder") and _accepts(SCLConfig, "folder")
    with pytest.raises(DataError, match="several datasets: fewshot-folder .*image-folder .*seg-folder"):
        check_dataset("folder", tmp_path)
    with pytest.raises(ConfigError, match="Did you mean 'voc'"):
        build_config(SupervisedConfig, {"data": {"dataset": "vco", "root": "/data"}})
    with pytest.raises(DataError, match="Did you mean 'cocostuff3' or 'cocostuff15'"):
        check_dataset("cocostuff", tmp_path)
    with pytest.raises(DataError, match="is a segmentation dataset, not a few-shot one"):
        get_dataset("voc", "few-shot")


def test_generated_datasets_are_checked_without_a_root() -> None:
    report = check_dataset("scenes")
    assert report.ok, report.format()
    assert report.counts["classes"] == 6 and report.counts["thing classes"] == 3


# ----------------------------------------------------------------------------------------------------------
# A dataset added from a test module: one builder, one checker, one registration.

TOY_CLASSES = ("sky", "kite", "grass")


class Stripes(FewDataset):
    """``count`` images of three horizontal bands (sky, kite, grass) of random heights."""

    def __init__(self, count: int, labeled: bool = True, transform: Transform | None = None) -> None:
        self.count, self.labeled, self.transform = count, labeled, transform

    def __len__(self) -> int:
        return self.count

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        g = np.random.default_rng(index)
        a, b = sorted(int(v) for v in g.integers(4, 28, size=2))
        mask = np.full((32, 32), 2, dtype=np.uint8)
        mask[:a], mask[a:b] = 0, 1
        image = (np.asarray([[40, 90, 220], [230, 60, 40], [40, 160, 50]], np.uint8)[mask]).astype(np.uint8)
        mask_or_none: np.ndarray | None = mask if self.labeled else None
        if self.transform is not None and rng is not None:
            image, mask_or_none = self.transform(image, mask_or_none, rng)
        out: dict[str, Any] = {"image": torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255, "index": index}
        if mask_or_none is not None:
            out["mask"] = torch.from_numpy(mask_or_none.astype(np.int64))
        return out


def _count(root: Path) -> int:
    return int((root / "count.txt").read_text())


def build_stripes(options: SegmentationOptions, transform: Transform) -> SegmentationData:
    n = _count(Path(options.root))
    return SegmentationData.from_metadata(
        Stripes(n // 2, transform=transform), Stripes(n, labeled=False, transform=transform), Stripes(4), STRIPES
    )


def check_stripes(root: Path, report: CheckReport) -> None:
    if not (root / "count.txt").is_file():
        report.add_problem(f"missing {root / 'count.txt'}")
        return
    report.counts["images"] = _count(root)


STRIPES = DatasetMetadata(class_names=TOY_CLASSES, thing_classes=(1,))


@pytest.fixture
def stripes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(registry, "DATASETS", dict(registry.DATASETS))
    register_dataset(
        DatasetSpec(
            "stripes", "toy bands", check_stripes, STRIPES, layout="  ROOT/count.txt", segmentation=build_stripes
        )
    )
    (tmp_path / "count.txt").write_text("8\n")
    return tmp_path


def test_a_dataset_registered_outside_the_package_is_usable_by_data_check(stripes: Path, capsys) -> None:
    report = check_dataset("stripes", stripes)
    assert report.ok and report.counts == {"images": 8}
    assert main(["data", "check", "stripes", str(stripes)]) == 0
    assert "stripes dataset at" in capsys.readouterr().out
    assert not check_dataset("stripes", stripes.parent / "absent").ok
    assert "stripes" in dataset_names("segmentation") and "stripes" not in dataset_names("few-shot")


def test_a_dataset_registered_outside_the_package_is_usable_by_the_segmentation_methods(stripes: Path) -> None:
    data = load_segmentation("stripes", SegmentationOptions(root=str(stripes), crop_size=32))
    assert (data.num_classes, data.class_names, data.ignore_index, data.thing_classes) == (
        3,
        list(TOY_CLASSES),
        255,
        [1],
    )
    tiny = {"data": {"dataset": "stripes", "root": str(stripes), "crop_size": 32}, "train": {"batch_size": 2}}
    supervised = SupervisedSegmentation(build_config(SupervisedConfig, tiny))
    assert len(supervised.train_sources()["labeled"].dataset) == 4
    torch.manual_seed(0)
    model = supervised.build_model().eval()
    with torch.no_grad():
        metrics = supervised.evaluate(model, torch.device("cpu"))
    assert 0.0 <= metrics["miou"] <= 1.0 and set(metrics) >= {"iou/sky", "iou/grass"} | {"pixel_accuracy"}
    # CCT's object masking reads the object classes from the dataset's metadata
    cct = CCTMethod(build_config(CCTConfig, {**tiny, "model": {"output_stride": 8}}))
    assert cct.background_classes == [0, 2]
    assert len(cct.train_sources()["unlabeled"].dataset) == 8
