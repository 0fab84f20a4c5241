"""benchmarks/cct_shift.py: CCT under a distribution shift against a supervised model of the source. Its cells are
valid configs that differ only where the comparison says, and every cell's value is measured on the target."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
from scipy import stats

from benchmark_scripts import load_benchmark
from fewlabels.registry import config_from_dict


@pytest.fixture
def shift(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for name in ("cct_ablation", "cct_fractions"):  # imported by cct_shift
        load_benchmark(name, monkeypatch)
    return load_benchmark("cct_shift", monkeypatch)


def tiny_uda() -> dict:
    """A two-domain config on tiny generated images: labeled scenes -> label-free scenes-shift."""
    tiny = {"scenes_train": 16, "scenes_val": 4, "scenes_size": 32, "crop_size": 32}
    return {
        "method": "cct",
        "model": {"encoder": "small_cnn", "output_stride": 8},
        "data": {"dataset": "scenes", "labeled": 8, **tiny},
        "domains": [{"dataset": "scenes-shift", "label_free": True, **tiny}],
        "predict_domain": 1,
        "unlabeled_batch_size": 2,
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "eval_every": 0, "log_every": 1},
    }


def test_cells_differ_only_in_the_target_the_consistency_weight_and_the_method(shift: ModuleType) -> None:
    cct = shift.read_config("scenes_uda")
    target = shift.target_of(cct)
    assert target["dataset"] == "scenes-shift" and target["label_free"] is True
    cells = shift.shift_cells(source_only=True)
    assert [c.name for c in cells] == ["supervised", "CCT (UDA)", "CCT without L_u", "CCT, source only"]
    assert [c.name for c in shift.shift_cells()] == ["supervised", "CCT (UDA)", "CCT without L_u"]
    run_config = sys.modules["cct_ablation"].run_config
    configs = {c.name: config_from_dict(run_config(cct, c, 3, 40, True)) for c in cells}
    for config in configs.values():
        assert config.seed == 3 and config.data.split_seed == 3 and config.train.steps == 40
        assert config.data == configs["CCT (UDA)"].data  # the same labeled source images for every cell of a seed
        assert config.model == configs["CCT (UDA)"].model and config.train == configs["CCT (UDA)"].train
    uda, no_loss, alone = configs["CCT (UDA)"], configs["CCT without L_u"], configs["CCT, source only"]
    assert configs["supervised"].method == "supervised" and not hasattr(configs["supervised"], "domains")
    assert [d.dataset for d in uda.domains] == ["scenes-shift"] and uda.domains[0].label_free
    assert no_loss.domains == uda.domains and no_loss.loss.unsup_weight == 0.0 and uda.loss.unsup_weight > 0
    assert alone.domains == [] and alone.predict_domain == 0 and alone.loss == uda.loss
    assert no_loss.perturbations == uda.perturbations == alone.perturbations


def test_a_config_without_a_label_free_target_is_refused(shift: ModuleType) -> None:
    with pytest.raises(SystemExit, match="label_free"):
        shift.target_of(shift.read_config("scenes"))
    two = tiny_uda()
    two["domains"][0]["label_free"] = False
    with pytest.raises(SystemExit, match="label_free"):
        shift.target_of(two)


def test_the_target_evaluation_reads_the_targets_dataset_not_its_split(shift: ModuleType) -> None:
    target = shift.target_of(tiny_uda())
    overrides = shift.target_overrides(target)
    assert sorted(overrides) == sorted(
        ["data.dataset=scenes-shift", "data.scenes_train=16", "data.scenes_val=4", "data.scenes_size=32"]
    )


def test_each_run_is_valued_on_the_target(shift: ModuleType, tmp_path: Path) -> None:
    """A two-domain run by its own ``miou_d1``; a single-domain run by an evaluation of its final weights on the
    target's validation images, which differs from its source mIoU and equals a fresh evaluation of those weights
    with the target as its data."""
    from fewlabels.engine import load_run

    cct = tiny_uda()
    measure = shift.measure_on_target(shift.target_of(cct))
    two = measure(tmp_path, cct, {"miou": 0.5, "miou_d0": 0.7, "miou_d1": 0.3})
    assert two == {"target_miou": 0.3, "source_miou": 0.7}
    args = argparse.Namespace(seeds=[0], out=str(tmp_path / "sweep"), steps=None, fresh=False, no_train=False)
    cells = [c for c in shift.shift_cells() if c.name == "supervised"]
    values = sys.modules["cct_ablation"].run_cells(args, cct, cells, True, measure, "target_miou")
    record = json.loads((tmp_path / "sweep" / "cells" / "supervised-seed0.json").read_text())
    got = values["supervised"][0]
    assert record["metrics"]["target_miou"] == got and record["metrics"]["source_miou"] == record["miou"]
    assert got != record["miou"] and 0.0 <= got <= 1.0
    per_class = {k: v for k, v in record["metrics"].items() if k.endswith("_target")}
    assert len(per_class) == 6 and math.isclose(sum(per_class.values()) / 6, got, rel_tol=1e-9)
    run = load_run(tmp_path / "sweep" / "runs" / "supervised-seed0", which="last", device="cpu")
    assert run.config.data.dataset == "scenes"
    with_target = load_run(run.run_dir, which="last", device="cpu", overrides=["data.dataset=scenes-shift"])
    assert with_target.config.data.dataset == "scenes-shift"
    assert math.isclose(with_target.evaluate()["miou"], got, rel_tol=1e-9)
    # read back without training: the stored target value, not the source's
    read = argparse.Namespace(**{**vars(args), "no_train": True})
    again = sys.modules["cct_ablation"].run_cells(read, cct, cells, True, measure, "target_miou")
    assert again == values


def test_summaries_pair_by_seed_and_give_the_controls(shift: ModuleType) -> None:
    values = {
        "supervised": {0: 0.40, 1: 0.50, 2: 0.45},
        "CCT (UDA)": {0: 0.46, 1: 0.52, 2: 0.50},
        "CCT without L_u": {0: 0.44, 1: 0.53, 2: 0.47},
        "CCT, source only": {},
    }
    rows = shift.summarise_shift(values)
    assert "CCT, source only" not in rows and "minus_source_only" not in rows["CCT (UDA)"]
    d = rows["CCT (UDA)"]["minus_supervised"]
    diffs = [0.06, 0.02, 0.05]
    half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / math.sqrt(3)
    assert d["seeds"] == [0, 1, 2] and math.isclose(d["mean"], sum(diffs) / 3, abs_tol=1e-12)
    assert math.isclose(d["ci95"], half, rel_tol=1e-9)
    c = rows["CCT (UDA)"]["minus_no_loss"]
    assert c["values"] == pytest.approx([0.02, -0.01, 0.03])
    table = shift.markdown(rows)
    assert "| CCT (UDA) | 0.493 | " in table and f"+0.043 +- {half:.3f} | 3/3 |" in table
    assert "| CCT (UDA) - CCT without L_u | +0.013 +- " in table and "| 2/3 |" in table
