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


def test_the_ablation_cells_change_only_the_perturbation_counts(shift: ModuleType) -> None:
    cct = shift.read_config("scenes_uda_dim")
    counts = config_from_dict(cct).perturbations.counts
    types = [t for t, n in counts.items() if n > 0]
    assert len(types) == 7
    cells = shift.ablation_cells(cct, "both", None)
    assert [c.name for c in cells] == [f"only {t}" for t in types] + [f"all but {t}" for t in types]
    assert [c.decoders for c in cells] == [1] * 7 + [6] * 7
    run_config = sys.modules["cct_ablation"].run_config
    uda = config_from_dict(run_config(cct, shift.shift_cells()[1], 2, 40, True))
    for cell in cells:
        config = config_from_dict(run_config(cct, cell, 2, 40, True))
        kept = {t for t, n in config.perturbations.counts.items() if n > 0}
        name = cell.name.split()[-1]
        assert kept == ({name} if cell.name.startswith("only") else set(types) - {name})
        assert config.perturbations.total == cell.decoders
        # everything else is the UDA cell's: the target domain, the loss, the data, the steps, the seed
        assert config.domains == uda.domains and config.loss == uda.loss and config.data == uda.data
        assert config.train == uda.train and config.model == uda.model and config.seed == uda.seed == 2
    assert [c.name for c in shift.ablation_cells(cct, "all-but", ["vat", "cutout"])] == [
        "all but vat",
        "all but cutout",
    ]
    assert shift.ablation_cells(cct, None, None) == []
    with pytest.raises(SystemExit, match="--ablation"):
        shift.ablation_cells(cct, None, ["vat"])
    with pytest.raises(SystemExit, match="'shear'"):
        shift.ablation_cells(cct, "only", ["shear"])


def test_the_ablation_is_paired_with_the_runs_without_l_u_and_with_full_uda(shift: ModuleType) -> None:
    cct = shift.read_config("scenes_uda_dim")
    only_vat, but_vat = shift.ablation_cells(cct, "both", ["vat"])
    values = {
        "supervised": {0: 0.40, 1: 0.50, 2: 0.45},
        "CCT (UDA)": {0: 0.46, 1: 0.52, 2: 0.50},
        "CCT without L_u": {0: 0.44, 1: 0.53, 2: 0.47},
        "only vat": {0: 0.45, 1: 0.55, 2: 0.47},
        "all but vat": {0: 0.41, 1: 0.51, 2: 0.46},
    }
    rows = shift.summarise_shift(values, [only_vat, but_vat])
    assert rows["only vat"]["K"] == 1 and rows["all but vat"]["K"] == 6 and "K" not in rows["CCT (UDA)"]
    assert rows["only vat"]["minus_no_loss"]["values"] == pytest.approx([0.01, 0.02, 0.0])
    assert rows["all but vat"]["minus_uda"]["values"] == pytest.approx([-0.05, -0.01, -0.04])
    assert rows["CCT (UDA)"]["minus_no_loss"]["values"] == pytest.approx([0.02, -0.01, 0.03])
    table = shift.markdown(rows)
    method_table, ablation_table = table.split("| cell | K |")
    assert "only vat" not in method_table and "| CCT (UDA) | 0.493 |" in method_table
    half = stats.t.ppf(0.975, 2) * stats.tstd([-0.05, -0.01, -0.04]) / math.sqrt(3)
    assert "| all but vat | 6 | 0.460 | 0.050 | 3 | -0.020 +- " in ablation_table
    assert ablation_table.rstrip().endswith(f"| 0/3 | -0.033 +- {half:.3f} |")
    assert "| only vat | 1 | 0.490 | 0.053 | 3 | +0.010 +- " in ablation_table and "| 2/3 |" in ablation_table
