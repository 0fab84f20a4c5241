"""The cells of benchmarks/cct_fractions.py: per label fraction, the baseline, CCT and the compute-matched control,
each a valid config that changes only the fraction, the split seed and (for the control) the steps."""

from __future__ import annotations

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
def fractions(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    load_benchmark("cct_ablation", monkeypatch)  # imported by cct_fractions; its tests read sys.modules["cct_ablation"]
    return load_benchmark("cct_fractions", monkeypatch)


def test_every_cell_changes_only_the_fraction_the_split_seed_and_the_controls_steps(fractions: ModuleType) -> None:
    cct = fractions.read_config("scenes")
    steps = config_from_dict(cct).train.steps
    cells = fractions.fraction_cells(control=True)
    assert [c.name for c in cells] == ["supervised", "CCT", "supervised 2x steps"]
    assert [c.name for c in fractions.fraction_cells(control=False)] == ["supervised", "CCT"]
    run_config = sys.modules["cct_ablation"].run_config
    configs = {
        c.name: config_from_dict(run_config(fractions.fraction_config(cct, 0.02), c, 3, None, True)) for c in cells
    }
    for config in configs.values():
        assert config.seed == 3 and config.data.split_seed == 3 and config.data.labeled == 0.02
        assert config.train.eval_every == 0
        assert config.data == configs["CCT"].data  # the same labeled images for every method of a seed
        assert config.model == configs["CCT"].model
        assert config.train.lr == configs["CCT"].train.lr and config.train.optimizer == configs["CCT"].train.optimizer
    assert configs["CCT"].method == "cct" and configs["supervised"].method == "supervised"
    assert configs["supervised 2x steps"].method == "supervised"
    assert (configs["supervised"].train.steps, configs["CCT"].train.steps) == (steps, steps)
    assert configs["supervised 2x steps"].train.steps == 2 * steps
    assert configs["supervised 2x steps"].train.checkpoint_every == 2 * steps
    # an explicit --steps scales the control too; without split_seed the config's draw is kept
    ctrl = run_config(cct, cells[2], 1, 50, False)
    assert ctrl["train"]["steps"] == 100 and ctrl["data"].get("split_seed", 0) == 0


def test_summaries_are_paired_by_seed_with_a_student_t_interval(fractions: ModuleType) -> None:
    values = {
        "supervised": {0: 0.40, 1: 0.50, 2: 0.45},
        "CCT": {0: 0.43, 1: 0.52, 2: 0.49, 7: 0.9},  # seed 7 has no baseline: not paired
    }
    rows = fractions.summarise_fraction(values)
    diffs = [0.03, 0.02, 0.04]
    d = rows["CCT"]["minus_supervised"]
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert math.isclose(d["mean"], 0.03, abs_tol=1e-12)
    half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / math.sqrt(3)
    assert math.isclose(d["ci95"], half, rel_tol=1e-9)
    assert rows["CCT"]["miou"]["n"] == 4 and "minus_supervised" not in rows["supervised"]
    table = fractions.markdown({0.02: rows})
    assert "| 0.02 | CCT | 0.585 | " in table and f"+0.030 +- {half:.3f} | 3/3 |" in table


def test_a_plot_is_written(fractions: ModuleType, tmp_path: Path) -> None:
    rows = {
        f: fractions.summarise_fraction({"supervised": {0: 0.4, 1: 0.5}, "CCT": {0: 0.45, 1: 0.5 + f}})
        for f in (0.02, 0.1)
    }
    path = fractions.save_plot(rows, tmp_path / "fractions.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_the_no_loss_control_is_cct_with_a_zero_consistency_weight_and_nothing_else(fractions: ModuleType) -> None:
    cct = fractions.read_config("scenes")
    cells = fractions.fraction_cells(control=False, no_loss_control=True)
    assert [c.name for c in cells] == ["supervised", "CCT", "CCT without L_u"]
    run_config = sys.modules["cct_ablation"].run_config
    base = fractions.fraction_config(cct, 0.05)
    full, no_loss = (config_from_dict(run_config(base, c, 2, None, True)) for c in cells[1:])
    assert no_loss.method == "cct" and full.loss.unsup_weight == 3.0 and no_loss.loss.unsup_weight == 0.0
    # apart from the weight, the very same run: data, model, perturbations (so the same compute), optimiser, steps
    assert no_loss.data == full.data and no_loss.model == full.model and no_loss.train == full.train
    assert no_loss.perturbations == full.perturbations and no_loss.unlabeled_batch_size == full.unlabeled_batch_size
    assert {k: v for k, v in vars(no_loss.loss).items() if k != "unsup_weight"} == {
        k: v for k, v in vars(full.loss).items() if k != "unsup_weight"
    }


def test_cct_is_paired_with_the_no_loss_control_when_both_ran(fractions: ModuleType) -> None:
    values = {
        "supervised": {0: 0.40, 1: 0.50, 2: 0.45},
        "CCT": {0: 0.46, 1: 0.52, 2: 0.50},
        "CCT without L_u": {0: 0.41, 1: 0.51, 2: 0.44},
    }
    rows = fractions.summarise_fraction(values)
    d = rows["CCT"]["minus_no_loss"]
    assert d["n"] == 3 and math.isclose(d["mean"], (0.05 + 0.01 + 0.06) / 3, abs_tol=1e-12)
    half = stats.t.ppf(0.975, 2) * stats.tstd([0.05, 0.01, 0.06]) / math.sqrt(3)
    assert math.isclose(d["ci95"], half, rel_tol=1e-9)
    table = fractions.markdown({0.1: rows})
    assert f"| 0.1 | +0.040 +- {half:.3f} | 3/3 |" in table
    # without the control there is no such row
    del values["CCT without L_u"]
    assert "minus_no_loss" not in fractions.summarise_fraction(values)["CCT"]
    assert "without L_u (paired" not in fractions.markdown({0.1: fractions.summarise_fraction(values)})


def test_cells_trains_a_subset_and_reports_every_cell_with_a_file(fractions: ModuleType, tmp_path: Path) -> None:
    cells = fractions.fraction_cells(control=True)
    assert [c.slug for c in fractions.selected_cells(cells, ["cct", "supervised_2x_steps"])] == [
        "cct",
        "supervised_2x_steps",
    ]
    assert fractions.selected_cells(cells, None) == cells
    with pytest.raises(SystemExit, match=r"--cells \['cct_without_l_u'\]: not a cell of this sweep"):
        fractions.selected_cells(cells, ["cct_without_l_u"])
    # two processes each wrote their cells; one call reads them back together, the unselected baseline included
    run_config = sys.modules["cct_ablation"].run_config
    folder = tmp_path / "f0.02" / "cells"
    folder.mkdir(parents=True)
    for cell, miou in zip(cells[:2], (0.80, 0.83), strict=True):
        config = run_config(fractions.fraction_config(fractions.read_config("scenes"), 0.02), cell, 0, None, True)
        record = {"cell": cell.name, "part": cell.part, "seed": 0, "miou": miou, "config": config}
        (folder / f"{cell.slug}-seed0.json").write_text(json.dumps(record))
    result = fractions.main(
        ["--fractions", "0.02", "--seeds", "0", "--cells", "cct", "--no-train"] + ["--out", str(tmp_path)]
    )
    row = result["fractions"][0.02]
    assert row["supervised"]["miou"]["values"] == [0.80] and row["CCT"]["miou"]["values"] == [0.83]
    assert math.isclose(row["CCT"]["minus_supervised"]["mean"], 0.03, abs_tol=1e-12)


def test_fraction_plot_title_names_the_dataset_and_file_not_the_path(fractions: ModuleType) -> None:
    cct = fractions.read_config("digit_mosaics")
    assert fractions.plot_label(cct, "/tmp/sweeps/warm.yaml") == "digit-mosaics (warm.yaml)"
    assert fractions.plot_label(fractions.read_config("scenes"), "scenes") == "scenes"


def test_a_cell_file_is_reused_across_config_names_and_refused_across_settings(
    fractions: ModuleType, tmp_path: Path
) -> None:
    """A baseline cell trained from a copy of the config under another ``name`` is the same training and is reused;
    one whose training differs (here the consistency loss's threshold does not reach the baseline, its lr does) is
    refused with one line naming the file."""
    ablation = sys.modules["cct_ablation"]
    cct = fractions.fraction_config(fractions.read_config("digit_mosaics"), 0.02)
    supervised = fractions.fraction_cells(control=False)[0]
    folder = tmp_path / "f0.02" / "cells"
    folder.mkdir(parents=True)
    path = folder / "supervised-seed0.json"

    def write(config: dict) -> None:
        record = {"cell": "supervised", "part": "baseline", "seed": 0, "miou": 0.5, "config": config}
        path.write_text(json.dumps(record))

    other_name = ablation.merged(cct, {"name": "a-copy", "loss": {"conf_threshold": 0.5}})
    write(ablation.run_config(other_name, supervised, 0, None, True))
    args = ["--config", "digit_mosaics", "--fractions", "0.02", "--seeds", "0", "--no-train", "--out", str(tmp_path)]
    row = fractions.main(args)["fractions"][0.02]
    assert row["supervised"]["miou"]["values"] == [0.5]
    write(ablation.run_config(ablation.merged(cct, {"train": {"lr": 0.1}}), supervised, 0, None, True))
    with pytest.raises(SystemExit, match="supervised-seed0.json was trained with another config"):
        fractions.main(args)


def test_the_weak_label_cell_is_cct_with_each_seeds_own_pseudo_labels(fractions: ModuleType, tmp_path: Path) -> None:
    cct = fractions.read_config("scenes")
    cells = fractions.fraction_cells(control=False, weak_labels=str(tmp_path / "seed{seed}" / "labels"))
    assert [c.name for c in cells] == ["supervised", "CCT", "CCT + weak labels"]
    assert cells[-1].slug == "cct_weak_labels"
    run_config = sys.modules["cct_ablation"].run_config
    base = fractions.fraction_config(cct, 0.02)
    for seed in (0, 3):
        full, weak = (config_from_dict(run_config(base, c, seed, None, True)) for c in cells[1:])
        assert weak.weak.labels_dir == str(tmp_path / f"seed{seed}" / "labels")
        assert full.weak.labels_dir == "" and weak.weak.weight == full.weak.weight
        # apart from the weak labels, the very same run as the seed's CCT cell
        assert (weak.data, weak.model, weak.train, weak.loss) == (full.data, full.model, full.train, full.loss)
        assert weak.data.split_seed == seed
    values = {"supervised": {0: 0.40, 1: 0.50}, "CCT": {0: 0.41, 1: 0.49}, "CCT + weak labels": {0: 0.45, 1: 0.52}}
    rows = fractions.summarise_fraction(values)
    d = rows["CCT + weak labels"]["minus_cct"]
    assert d["values"] == pytest.approx([0.04, 0.03]) and d["mean"] == pytest.approx(0.035)
    assert "| labeled | CCT + weak labels - CCT (paired, 95% CI) | seeds ahead |" in fractions.markdown({0.02: rows})


def test_with_the_no_loss_control_the_weak_labels_are_also_trained_alone(fractions: ModuleType, tmp_path: Path) -> None:
    cells = fractions.fraction_cells(False, True, str(tmp_path / "s{seed}"))
    names = ["supervised", "CCT", "CCT without L_u", "CCT + weak labels", "CCT + weak labels without L_u"]
    assert [c.name for c in cells] == names
    run_config = sys.modules["cct_ablation"].run_config
    base = fractions.fraction_config(fractions.read_config("scenes"), 0.02)
    weak, alone = (config_from_dict(run_config(base, c, 4, None, True)) for c in cells[3:])
    assert alone.weak == weak.weak and alone.weak.labels_dir == str(tmp_path / "s4")
    assert (weak.loss.unsup_weight, alone.loss.unsup_weight) == (3.0, 0.0)
    assert (alone.data, alone.model, alone.train) == (weak.data, weak.model, weak.train)
    values = {"supervised": {0: 0.4, 1: 0.5}, "CCT + weak labels": {0: 0.46, 1: 0.55}}
    values["CCT + weak labels without L_u"] = {0: 0.45, 1: 0.52}
    rows = fractions.summarise_fraction(values)
    assert rows["CCT + weak labels"]["minus_no_loss"]["values"] == pytest.approx([0.01, 0.03])
    assert "CCT + weak labels - CCT + weak labels without L_u (paired" in fractions.markdown({0.02: rows})


def test_the_weak_baseline_puts_the_same_pseudo_labels_on_the_main_decoder(
    fractions: ModuleType, tmp_path: Path
) -> None:
    cells = fractions.fraction_cells(False, True, str(tmp_path / "s{seed}"), weak_baseline=True)
    assert [c.name for c in cells][-3:] == [
        "CCT + weak labels",
        "CCT + weak labels without L_u",
        "pseudo-labels as masks",
    ]
    assert cells[-1].slug == "pseudo_labels_as_masks"
    run_config = sys.modules["cct_ablation"].run_config
    base = fractions.fraction_config(fractions.read_config("digit_mosaics"), 0.02)
    alone, masks = (config_from_dict(run_config(base, c, 2, None, True)) for c in cells[-2:])
    assert (alone.weak.target, masks.weak.target) == ("aux", "main")
    assert masks.weak.labels_dir == alone.weak.labels_dir == str(tmp_path / "s2")
    assert masks.weak.weight == alone.weak.weight and masks.loss == alone.loss and masks.loss.unsup_weight == 0.0
    assert (masks.data, masks.model, masks.train) == (alone.data, alone.model, alone.train)
    values = {
        "supervised": {0: 0.4, 1: 0.5},
        "CCT + weak labels": {0: 0.46, 1: 0.55},
        "CCT + weak labels without L_u": {0: 0.45, 1: 0.52},
        "pseudo-labels as masks": {0: 0.47, 1: 0.50},
    }
    rows = fractions.summarise_fraction(values)
    assert rows["CCT + weak labels"]["minus_pseudo_masks"]["values"] == pytest.approx([-0.01, 0.05])
    assert rows["CCT + weak labels without L_u"]["minus_pseudo_masks"]["values"] == pytest.approx([-0.02, 0.02])
    assert rows["pseudo-labels as masks"]["minus_supervised"]["values"] == pytest.approx([0.07, 0.0])
    assert "| labeled | CCT + weak labels - pseudo-labels as masks (paired, 95% CI) | seeds ahead |" in (
        fractions.markdown({0.02: rows})
    )
    with pytest.raises(SystemExit, match="--weak-baseline needs --weak-labels"):
        fractions.fraction_cells(False, weak_baseline=True)


def test_weak_weights_set_per_fraction_each_way_of_using_the_weak_labels_its_own_weight(
    fractions: ModuleType, tmp_path: Path
) -> None:
    labels = str(tmp_path / "s{seed}")
    run_config = sys.modules["cct_ablation"].run_config
    base = fractions.fraction_config(fractions.read_config("digit_mosaics"), 0.02)
    default = config_from_dict(base).weak.weight
    cells = fractions.fraction_cells(False, True, labels, True, weak_weight=1.5, masks_weight=0.005)
    configs = {c.name: config_from_dict(run_config(base, c, 1, None, True)) for c in cells}
    assert configs["CCT + weak labels"].weak.weight == 1.5
    assert configs["CCT + weak labels without L_u"].weak.weight == 1.5
    assert configs["pseudo-labels as masks"].weak.weight == 0.005
    assert (
        configs["pseudo-labels as masks"].weak.target == "main"
        and configs["pseudo-labels as masks"].loss.unsup_weight == 0
    )
    assert configs["CCT + weak labels without L_u"].loss.unsup_weight == 0.0
    assert configs["CCT + weak labels"].loss == configs["CCT"].loss  # only the weight changed
    assert configs["CCT"].weak.weight == default and configs["CCT"].weak.labels_dir == ""
    # the plain baseline follows CCT's weight unless given its own; without weights, the config's
    same = fractions.fraction_cells(False, False, labels, True, weak_weight=0.1)
    assert {c.name: config_from_dict(run_config(base, c, 1, None, True)).weak.weight for c in same[2:]} == {
        "CCT + weak labels": 0.1,
        "pseudo-labels as masks": 0.1,
    }
    plain = fractions.fraction_cells(False, False, labels, True)
    assert {config_from_dict(run_config(base, c, 1, None, True)).weak.weight for c in plain[2:]} == {default}
    with pytest.raises(SystemExit, match="--weak-weights and --masks-weights need --weak-labels"):
        fractions.fraction_cells(False, weak_weight=1.0)


def test_weak_weights_options_are_per_fraction_and_refuse_bad_items(fractions: ModuleType) -> None:
    assert fractions.per_fraction("--weak-weights", ["0.02=1.5", "0.1=0"], [0.02, 0.1]) == {0.02: 1.5, 0.1: 0.0}
    assert fractions.per_fraction("--masks-weights", [], [0.02]) == {}
    for item in ("0.02", "0.02=x", "a=1", "0.02=-1", "0.02=nan"):
        with pytest.raises(SystemExit, match=r"--weak-weights takes FRACTION=WEIGHT items with WEIGHT >= 0; got"):
            fractions.per_fraction("--weak-weights", [item], [0.02])
    with pytest.raises(SystemExit, match=r"--masks-weights '0.05=1': 0.05 is not one of --fractions \[0.02\]"):
        fractions.per_fraction("--masks-weights", ["0.05=1"], [0.02])


def test_a_sweep_reads_back_cells_at_their_own_weights_and_refuses_another(
    fractions: ModuleType, tmp_path: Path
) -> None:
    """Cells trained at per-fraction weights (e.g. in folders of their own) are read back together under the
    weights given on the command line; a cell file trained at another weight is refused."""
    ablation = sys.modules["cct_ablation"]
    labels = str(tmp_path / "labels" / "s{seed}")
    cct = fractions.read_config("digit_mosaics")
    out = tmp_path / "out"
    for fraction, weight, miou in ((0.02, 1.5, 0.30), (0.1, 0.1, 0.55)):
        cells = fractions.fraction_cells(False, False, labels, False, weak_weight=weight)
        folder = out / f"f{fraction:g}" / "cells"
        folder.mkdir(parents=True)
        for cell, value in zip(cells, (miou - 0.05, miou - 0.02, miou), strict=True):
            config = ablation.run_config(fractions.fraction_config(cct, fraction), cell, 0, None, True)
            record = {"cell": cell.name, "part": cell.part, "seed": 0, "miou": value, "config": config}
            (folder / f"{cell.slug}-seed0.json").write_text(json.dumps(record))
    args = ["--config", "digit_mosaics", "--fractions", "0.02", "0.1", "--seeds", "0", "--no-train"]
    args += ["--weak-labels", labels, "--out", str(out)]
    result = fractions.main(args + ["--weak-weights", "0.02=1.5", "0.1=0.1"])
    assert result["weak_weights"] == {0.02: 1.5, 0.1: 0.1}
    assert result["fractions"][0.02]["CCT + weak labels"]["miou"]["values"] == [0.30]
    assert result["fractions"][0.1]["CCT + weak labels"]["miou"]["values"] == [0.55]
    with pytest.raises(SystemExit, match=r"f0.1/cells/cct_weak_labels-seed0.json was trained with another config"):
        fractions.main(args + ["--weak-weights", "0.02=1.5"])


def test_every_method_cell_is_paired_with_the_compute_matched_control(fractions: ModuleType) -> None:
    values = {
        "supervised": {0: 0.40, 1: 0.50},
        "supervised 2x steps": {0: 0.44, 1: 0.52},
        "CCT": {0: 0.41, 1: 0.51},
        "CCT + weak labels": {0: 0.47, 1: 0.55},
        "pseudo-labels as masks": {0: 0.45, 1: 0.51},
    }
    rows = fractions.summarise_fraction(values)
    expected = {"CCT": [-0.03, -0.01], "CCT + weak labels": [0.03, 0.03], "pseudo-labels as masks": [0.01, -0.01]}
    for name, diffs in expected.items():
        assert rows[name]["minus_control"]["values"] == pytest.approx(diffs)
    assert "minus_control" not in rows["supervised 2x steps"]
    table = fractions.markdown({0.02: rows})
    assert "| labeled | CCT + weak labels - supervised 2x steps (paired, 95% CI) | seeds ahead |" in table
    assert "| 0.02 | -0.020 +- " in table  # CCT - the control
