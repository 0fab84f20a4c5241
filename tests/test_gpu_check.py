"""benchmarks/gpu_check.py without a GPU: one line per real config saying what needs CUDA, and ``--cpu-smoke`` running
every code path of the CUDA measurement once per method at a tiny size (the losses finite)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

#: the fields of every line, measured or not
LINE_KEYS = {"config", "method", "device", "batch", "input", "mixed_precision"}
#: the figures only a CUDA run gives
CUDA_KEYS = {"step_s", "peak_mb", "channels_last_step_s", "cct_k30_over_k1", "ac_two_view_over_one_view"}


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))  # the script imports its siblings cct_step.py and ac_step.py
        spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, "gpu_check", module)  # its dataclasses look the module up while they are made
        spec.loader.exec_module(module)
        yield module


def _run(module: ModuleType, *argv: str) -> tuple[list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        module.main(["--device", "cpu", *argv])
    return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


@pytest.fixture(scope="module")
def smoke_run(gpu_check) -> tuple[list[dict[str, Any]], str]:
    return _run(gpu_check, "--cpu-smoke", "--table")


def _real_configs() -> list[str]:
    """The shipped configs whose dataset is not one of the embedded demo datasets."""
    names = []
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        if yaml.safe_load(path.read_text())["data"]["dataset"] not in ("scenes", "glyphs", "digit-mosaics"):
            names.append(path.relative_to(ROOT / "configs").as_posix())
    return names


def test_one_line_per_real_config_each_saying_it_needs_cuda(smoke_run):
    lines, _ = smoke_run
    assert [line["config"] for line in lines] == _real_configs()
    assert {"cct/voc_1464.yaml", "ac/potsdam6.yaml", "scl/mini_imagenet.yaml", "relbitfit/glue_mnli.yaml"} <= {
        line["config"] for line in lines
    }
    for line in lines:
        assert LINE_KEYS <= line.keys(), line
        assert line["skipped"] == "needs CUDA" and line["device"] == "cpu"
        assert not CUDA_KEYS & line.keys(), line
        assert line["mixed_precision"] == "bf16"  # every shipped config trains with autocast bf16 on CUDA
    by_name = {line["config"]: line for line in lines}
    assert by_name["cct/voc_1464.yaml"]["batch"] == "10+10" and by_name["cct/voc_1464.yaml"]["input"] == "3x320x320"
    assert by_name["ac/potsdam6.yaml"]["input"] == "4x200x200"  # RGB + infrared
    assert by_name["scl/mini_imagenet.yaml"]["input"] == "2x3x84x84"  # two views
    assert by_name["relbitfit/glue_mnli.yaml"]["input"] == "128 tokens"


def test_the_cpu_smoke_runs_every_method_once_with_finite_losses(smoke_run):
    lines, _ = smoke_run
    smoked = {line["config"]: line["cpu_smoke"] for line in lines if "cpu_smoke" in line}
    # one config of each code path: AC with orderings and its IIC baseline, RelBitFit on a Hugging Face directory
    # (a random roberta-base architecture, tiny) and on the packaged MiniLM
    assert sorted(smoked) == [
        "ac/cocostuff15.yaml",
        "ac/cocostuff15_iic.yaml",
        "cct/cityscapes.yaml",
        "relbitfit/glue_cola.yaml",
        "relbitfit/rotten_tomatoes.yaml",
        "scl/cifar_fs.yaml",
        "scl/cifar_fs_distill.yaml",
    ]
    methods = {line["method"] for line in lines if "cpu_smoke" in line}
    assert methods == {"ac", "cct", "relbitfit", "scl", "scl-distill"}
    expected = {  # the timed functions of each measurement
        "ac/cocostuff15.yaml": {"step", "one_view", "two_view", "channels_last"},
        "ac/cocostuff15_iic.yaml": {"step", "channels_last"},
        "cct/cityscapes.yaml": {"step", "k1", "channels_last"},
        "relbitfit/glue_cola.yaml": {"step"},
        "relbitfit/rotten_tomatoes.yaml": {"step"},
        "scl/cifar_fs.yaml": {"step", "channels_last"},
        "scl/cifar_fs_distill.yaml": {"step", "channels_last"},
    }
    for name, result in smoked.items():
        assert set(result["losses"]) == expected[name], name
        assert all(math.isfinite(v) for v in result["losses"].values()), (name, result)
    # a 2-class classifier from random initial weights: about -log(1/2)
    assert smoked["relbitfit/glue_cola.yaml"]["losses"]["step"] == pytest.approx(math.log(2), abs=0.3)
    for name in ("scl/cifar_fs.yaml", "scl/cifar_fs_distill.yaml"):  # the tiny episodic evaluation ran
        assert 0.0 <= smoked[name]["fewshot_acc_1shot"] <= 100.0
    assert smoked["cct/cityscapes.yaml"]["sizes"]["data.crop_size"] == 32


def test_the_table_has_a_row_per_config(smoke_run):
    lines, err = smoke_run
    table = [row for row in err.splitlines() if row.startswith("|")]
    assert table[0].startswith("| config | batch | input | AMP | step (s) | peak (GB) |")
    assert len(table) == 2 + len(lines)
    assert table[2].startswith(f"| {lines[0]['config']} | {lines[0]['batch']} |")
    assert all("needs CUDA" in row for row in table[2:])


def test_configs_of_equal_steps_are_measured_once(gpu_check):
    plans = {plan.name: plan for plan in gpu_check.real_configs()}
    signature = {name: plan.signature for name, plan in plans.items()}
    # the VOC label splits train the same network on the same crops
    assert len({signature[f"cct/voc_{n}.yaml"] for n in (92, 183, 366, 732, 1464)}) == 1
    assert signature["cct/voc_1464.yaml"] != signature["cct/cityscapes.yaml"]
    # GLUE tasks with the same label space share a measurement; 3 classes (MNLI) and regression (STS-B) do not
    assert signature["relbitfit/glue_cola.yaml"] == signature["relbitfit/glue_sst2.yaml"]
    assert len({signature[f"relbitfit/glue_{t}.yaml"] for t in ("sst2", "mnli", "stsb")}) == 3
    # the variants of one dataset differ (BitFit, full fine-tuning; AC and its IIC baseline)
    assert signature["relbitfit/rotten_tomatoes.yaml"] != signature["relbitfit/rotten_tomatoes_bitfit.yaml"]
    assert signature["ac/potsdam6.yaml"] != signature["ac/potsdam6_iic.yaml"]


def test_only_selects_configs_and_an_unmatched_selection_is_an_error(gpu_check):
    lines, _ = _run(gpu_check, "--only", "cct/voc_92", "scl/fc100_distill")
    assert [line["config"] for line in lines] == ["cct/voc_92.yaml", "scl/fc100_distill.yaml"]
    assert all("cpu_smoke" not in line for line in lines)  # no smoke unless asked
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        gpu_check.main(["--device", "cpu", "--only", "no/such/config"])
