"""The cells of benchmarks/cct_ablation.py: one per registered perturbation type alone and all-but-one, from the
registry and the config's counts, each a valid config that changes only what its name says."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
from torch import Tensor

from benchmark_scripts import load_benchmark
from fewlabels.methods.cct.perturbations import (
    PerturbationInput,
    PerturbationsConfig,
    SpatialMaskPerturbation,
    register_perturbation,
    registered_perturbations,
    unregister_perturbation,
)
from fewlabels.registry import config_from_dict


@pytest.fixture
def ablation(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_benchmark("cct_ablation", monkeypatch)


@pytest.fixture
def fractions(ablation: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_benchmark("cct_fractions", monkeypatch)  # imports the ablation fixture's cct_ablation


class Halve(SpatialMaskPerturbation):
    """A toy type whose count field is not its name."""

    name = "halve"
    count_field = "halve_decoders"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        return torch.full((n, inputs.z.shape[0], 1, 1, 1), 0.5)


@pytest.fixture
def halve() -> Iterator[None]:
    register_perturbation(Halve)
    try:
        yield
    finally:
        unregister_perturbation("halve")


def test_scenes_cells_are_each_type_alone_and_all_but_one_with_the_configs_counts(ablation: ModuleType) -> None:
    cct = ablation.read_config("scenes")
    cells = ablation.build_cells(cct, ["ablation", "curve"], [100, 900])
    counts = config_from_dict(cct).perturbations.counts
    names = [p.name for p in registered_perturbations()]
    assert [c.name for c in cells] == [
        "supervised",
        "CCT (all)",
        *(f"only {n}" for n in names),
        *(f"all but {n}" for n in names),
        "unlabeled 100",
        "unlabeled 900",
    ]
    by_name = {c.name: c for c in cells}
    # configs/cct/scenes.yaml: one decoder per type
    assert by_name["CCT (all)"].decoders == 7 and by_name["only vat"].decoders == 1
    assert by_name["all but feature_noise"].decoders == 6
    # the reference's counts (2/6/6/2/2/6/6) give their own K
    reference = ablation.merged(cct, {"perturbations": PerturbationsConfig().counts})
    cells30 = {c.name: c for c in ablation.build_cells(reference, ["ablation"], [])}
    assert cells30["CCT (all)"].decoders == 30 and cells30["only vat"].decoders == 2
    assert cells30["all but feature_noise"].decoders == 24
    for cell in cells:
        config = config_from_dict(ablation.run_config(cct, cell, seed=3, steps=7))
        assert (config.seed, config.train.steps, config.train.eval_every) == (3, 7, 0)
        assert config.data == config_from_dict(cct).data  # the same data for every cell
        if cell.name == "supervised":
            assert config.method == "supervised"
            continue
        got = config.perturbations.counts
        assert config.perturbations.total == cell.decoders
        if cell.name.startswith("only "):
            kept = cell.name.removeprefix("only ")
            assert got == {n: counts[n] if n == kept else 0 for n in names}
        elif cell.name.startswith("all but "):
            dropped = cell.name.removeprefix("all but ")
            assert got == {n: 0 if n == dropped else counts[n] for n in names}
        else:
            assert got == counts
        assert config.unlabeled_images == (cell.unlabeled or 0)


def test_types_without_decoders_get_no_cell_and_count_fields_come_from_the_registry(
    ablation: ModuleType, halve: None
) -> None:
    counts = {"vat": 2, "dropout": 0, "cutout": 6, "context_mask": 0, "object_mask": 0, "feature_drop": 0}
    counts |= {"feature_noise": 0, "halve": 3}
    cells = {c.name: c for c in ablation.perturbation_cells(counts)}
    assert list(cells) == [
        "only vat",
        "only cutout",
        "only halve",
        "all but vat",
        "all but cutout",
        "all but halve",
    ]
    zero = dict.fromkeys(["dropout", "context_mask", "object_mask", "feature_drop", "feature_noise"], 0)
    assert cells["only halve"].overrides == {"perturbations": {"vat": 0, "cutout": 0, **zero, "halve_decoders": 3}}
    assert cells["all but vat"].overrides == {"perturbations": {"vat": 0, "cutout": 6, **zero, "halve_decoders": 3}}
    assert [cells[n].decoders for n in cells] == [2, 6, 3, 9, 5, 8]
    # a single type with decoders has no all-but-one cell (it would leave no aux decoder)
    assert [c.name for c in ablation.perturbation_cells({"vat": 0, "cutout": 4})] == ["only cutout"]


def test_ablation_kind_keeps_one_family_and_refuses_an_unknown_one(ablation: ModuleType) -> None:
    counts = {"vat": 1, "dropout": 2, "cutout": 0}
    both = [c.name for c in ablation.perturbation_cells(counts)]
    only = [c.name for c in ablation.perturbation_cells(counts, "only")]
    all_but = [c.name for c in ablation.perturbation_cells(counts, "all-but")]
    assert only == ["only vat", "only dropout"] and all_but == ["all but vat", "all but dropout"]
    assert both == only + all_but
    cct = ablation.read_config("scenes")
    names = [c.name for c in ablation.build_cells(cct, ["ablation"], [], "only")]
    assert names[:2] == ["supervised", "CCT (all)"] and all(n.startswith("only ") for n in names[2:])
    with pytest.raises(ValueError, match="ablation kind"):
        ablation.perturbation_cells(counts, "some")


def test_labeled_cells_are_the_fraction_sweeps_cells(ablation: ModuleType, fractions: ModuleType) -> None:
    """With --labeled f, the baseline and full CCT of seed s are the configs benchmarks/cct_fractions.py trains for
    fraction f and seed s (so one sweep's cell files serve the other); every cell draws the seed's labeled images."""
    cct = ablation.read_config("scenes")
    sweep = ablation.merged(cct, {"data": {"labeled": 0.02}})  # what main() does with --labeled 0.02
    base, full = ablation.build_cells(sweep, ["ablation"], [], "only")[:2]
    frac_base, frac_cct = fractions.fraction_cells(control=False)
    frac = fractions.fraction_config(cct, 0.02)
    assert ablation.run_config(sweep, base, 4, None, True) == ablation.run_config(frac, frac_base, 4, None, True)
    assert ablation.run_config(sweep, full, 4, None, True) == ablation.run_config(frac, frac_cct, 4, None, True)
    for cell in ablation.build_cells(sweep, ["ablation", "curve"], [100], "only"):
        data = config_from_dict(ablation.run_config(sweep, cell, 4, None, True)).data
        assert (data.labeled, data.split_seed) == (0.02, 4)


def test_plot_labels_say_how_many_seeds_and_claim_no_ci_for_one(ablation: ModuleType) -> None:
    assert ablation._seeds_label([{"n": 1}, {"n": 1}]) == "1 seed, no CI"
    assert ablation._seeds_label([{"n": 3}]) == "mean over 3 seeds, 95% CI"
    assert ablation._seeds_label([{"n": 2}, {"n": 5}, {"n": 3}]) == "mean over 2-5 seeds, 95% CI"


def test_only_k_control_gives_one_type_all_the_decoders_and_types_select_cells(ablation: ModuleType) -> None:
    counts = {"vat": 2, "dropout": 0, "cutout": 6, "context_mask": 1, "object_mask": 0, "feature_drop": 0}
    counts |= {"feature_noise": 0}
    cells = ablation.perturbation_cells(counts, "only-k")
    assert [c.name for c in cells] == ["only vat x9", "only cutout x9", "only context_mask x9"]
    assert [c.decoders for c in cells] == [9, 9, 9]
    zero = dict.fromkeys(["dropout", "object_mask", "feature_drop", "feature_noise"], 0)
    assert cells[1].overrides == {"perturbations": {"vat": 0, "cutout": 9, "context_mask": 0, **zero}}
    picked = ablation.perturbation_cells(counts, "both", types=["cutout"])
    assert [c.name for c in picked] == ["only cutout", "all but cutout"]
    assert picked[1].overrides["perturbations"]["cutout"] == 0 and picked[1].decoders == 3
    with pytest.raises(ValueError, match="dropout"):  # a type without decoders in the config has no cell
        ablation.perturbation_cells(counts, "only", types=["dropout"])
    # scenes: K = 7, one decoder per type; the control of a type is a valid config with 7 decoders of it
    cct = ablation.read_config("scenes")
    control = ablation.build_cells(cct, ["ablation"], [], "only-k", ["context_mask"])
    assert [c.name for c in control] == ["supervised", "CCT (all)", "only context_mask x7"]
    config = config_from_dict(ablation.run_config(cct, control[2], seed=0, steps=5))
    assert config.perturbations.counts["context_mask"] == 7 and config.perturbations.total == 7
