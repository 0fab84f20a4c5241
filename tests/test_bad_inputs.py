"""Bad-input catalogue: every row runs the CLI (``main``, in this process, with the test-only "toy" method
registered) and must fail with a non-zero status, exactly one ``error:`` line naming the problem (file, key or value),
no traceback, and no change to any file it was given (sha256 before and after). Two rows also run through the real
entry point, ``python -m fewlabels``, in a fresh interpreter. Rows are added as methods land."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import toy_method  # noqa: F401 - registers the "toy" method of the run directory the resume rows use
from cli_cases import digests, error_lines, given_paths, run_cli, tiny_scl_config
from conftest import subprocess_env
from fewlabels.config import write_yaml
from fewlabels.registry import config_from_dict


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Broken datasets, configs and run directories, built once."""
    t = tmp_path_factory.mktemp("bad")
    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    # a folder whose image does not decode
    _png(t / "corrupt/masks/a.png", mask)
    (t / "corrupt/images").mkdir(parents=True)
    (t / "corrupt/images/a.png").write_bytes(b"not a png at all")
    (t / "corrupt/classes.txt").write_text("a\nb\n")
    # a mask with class 9 in a 3-class dataset
    _png(t / "badclass/images/a.png", rgb)
    _png(t / "badclass/masks/a.png", np.full((16, 16), 9, np.uint8))
    (t / "badclass/classes.txt").write_text("a\nb\nc\n")
    # image and mask of different sizes
    _png(t / "mismatch/images/a.png", rgb)
    _png(t / "mismatch/masks/a.png", np.zeros((8, 8), np.uint8))
    (t / "mismatch/classes.txt").write_text("a\nb\n")
    # a folder without images
    (t / "noimages/images").mkdir(parents=True)
    (t / "emptydir").mkdir()
    # a toy run directory whose only checkpoint is corrupt
    run = t / "runs/toyrun"
    (run / "checkpoints").mkdir(parents=True)
    # its config as training writes it (a resume writes it again, the same, before it reads the checkpoint)
    toy = config_from_dict({"method": "toy", "name": "toyrun", "output_dir": str(t / "runs")})
    write_yaml(toy, run / "config.yaml")
    (run / "checkpoints/step_00000002.pt").write_bytes(b"garbage")
    (run / "checkpoints/step_00000002.sha256").write_text("0" * 64)
    # config files
    (t / "sup.yaml").write_text(yaml.safe_dump({"method": "supervised", "output_dir": str(t / "runs")}))
    (t / "toy.yaml").write_text(yaml.safe_dump({"method": "toy", "output_dir": str(t / "runs")}))
    (t / "list.yaml").write_text("- just\n- a list\n")
    torch.save({"x": torch.zeros(1)}, t / "weights.pth")
    # text files: one without the label column, one with a label outside label_names
    (t / "nolabel.csv").write_text("text,other\ngood film,1\nbad film,0\n")
    (t / "badlabel.csv").write_text("text,label\ngood film,positive\nbad film,maybe\n")
    (t / "rb.yaml").write_text(yaml.safe_dump({"method": "relbitfit", "output_dir": str(t / "runs")}))
    (t / "cct.yaml").write_text(yaml.safe_dump({"method": "cct", "output_dir": str(t / "runs")}))
    # a tiny trained few-shot run for the episode-request cases
    (t / "scl.yaml").write_text(yaml.safe_dump(tiny_scl_config(t / "runs")))
    res = run_cli(["train", str(t / "scl.yaml")])
    assert res.returncode == 0, res.stderr[-2000:]
    return t


SEG = ["train", "{t}/sup.yaml"]
FOLDER = [*SEG, "data.dataset=folder"]

#: (id, CLI arguments with {t} for the fixture folder, fragments the error line must contain)
CASES = [
    ("missing dataset root", [*FOLDER, "data.root={t}/nope"], ["not found", "{t}/nope"]),
    ("empty dataset root", [*FOLDER, "data.root={t}/emptydir"], ["images", "not found"]),
    ("wrong layout for voc", [*SEG, "data.dataset=voc", "data.root={t}/emptydir"], ["JPEGImages"]),
    (
        "image that fails to decode",
        [*FOLDER, "data.root={t}/corrupt", "train.batch_size=1", "train.steps=1"],
        ["{t}/corrupt/images/a.png"],
    ),
    (
        "mask class outside range",
        [*FOLDER, "data.root={t}/badclass", "train.batch_size=1", "train.steps=1"],
        ["a.png", "9"],
    ),
    (
        "image/mask size mismatch",
        [*FOLDER, "data.root={t}/mismatch", "train.batch_size=1", "train.steps=1"],
        ["16x16", "8x8"],
    ),
    ("folder without images", [*FOLDER, "data.root={t}/noimages"], ["no"]),
    ("labeled fraction zero", [*SEG, "data.labeled=0"], ["data.labeled", "> 0"]),
    ("labeled count not whole", [*SEG, "data.labeled=1.5"], ["data.labeled", "whole number"]),
    ("labeled count above the dataset", [*SEG, "data.labeled=5000", "data.scenes_train=32"], ["5000", "32"]),
    ("unknown config key", [*SEG, "train.lrr=0.1"], ["train.lrr", "did you mean 'lr'"]),
    ("wrong type", [*SEG, "train.steps=ten"], ["train.steps", "integer"]),
    ("bad enum", [*SEG, "train.optimizer=sgdd"], ["train.optimizer", "sgd"]),
    ("unknown method", ["train", "{t}/sup.yaml", "method=supervized"], ["method", "did you mean 'supervised'"]),
    ("unknown backbone", [*SEG, "model.encoder=resnet5"], ["model.encoder", "resnet50"]),
    ("zero batch size", [*SEG, "train.batch_size=0"], ["train.batch_size", ">= 1"]),
    ("negative batch size", [*SEG, "train.batch_size=-4"], ["train.batch_size", ">= 1"]),
    ("negative learning rate", [*SEG, "train.lr=-0.1"], ["train.lr", "> 0"]),
    (
        "batch not divisible by accumulation",
        [*SEG, "train.batch_size=8", "train.grad_accum=3"],
        ["train.batch_size", "divisible"],
    ),
    # (A labeled set smaller than a batch is no longer an error: the segmentation methods repeat it to fill one.)
    (
        "id list for a dataset that has no ids",
        [*SEG, "data.labeled_list={t}/ids.txt"],
        ["data.labeled_list", "not supported by dataset 'scenes'"],
    ),
    ("missing pretrained weight file", [*SEG, "model.pretrained={t}/resnet.pth"], ["{t}/resnet.pth"]),
    (
        "pretrained file that does not fit",
        [*SEG, "model.encoder=resnet18", "model.pretrained={t}/weights.pth"],
        ["weights.pth"],
    ),
    ("config file not found", ["train", "{t}/nope.yaml"], ["{t}/nope.yaml"]),
    ("config that is not a mapping", ["train", "{t}/list.yaml"], ["mapping"]),
    ("two config files", ["train", "{t}/sup.yaml", "{t}/toy.yaml"], ["only one config file"]),
    ("no config and no resume", ["train"], ["config"]),
    ("eval of a folder that is not a run", ["eval", "{t}/emptydir"], ["not a run directory"]),
    ("eval of a missing folder", ["eval", "{t}/nothing"], ["not a run directory"]),
    (
        "resume from a run of another method",
        ["train", "{t}/sup.yaml", "--resume", "{t}/runs/toyrun"],
        ["'toy' run", "'supervised'"],
    ),
    (
        "resume changing the trajectory",
        ["train", "--resume", "{t}/runs/toyrun", "train.lr=1"],
        ["train.lr", "cannot be changed when resuming"],
    ),
    ("corrupt checkpoint", ["train", "--resume", "{t}/runs/toyrun"], ["checkpoints", "corrupt"]),
    (
        "predict with a run without weights",
        ["predict", "{t}/runs/toyrun", "{t}/corrupt", "--out", "{t}/o"],
        ["no weights"],
    ),
    (
        "predict --out inside the input",
        ["predict", "{t}/runs/toyrun", "{t}/noimages", "--out", "{t}/noimages/o"],
        ["inside the input folder"],
    ),
    ("predict on a missing input", ["predict", "{t}/runs/toyrun", "{t}/absent", "--out", "{t}/o"], ["input not found"]),
    ("data check of an unknown kind", ["data", "check", "vco", "{t}"], ["did you mean 'voc'"]),
    ("methods of an unknown method", ["methods", "cctt"], ["unknown method"]),
    (
        "multi-domain: a label-free domain with other classes",
        ["train", "{t}/cct.yaml", "domains=[{dataset: folder, root: {t}/badclass, crop_size: 96, label_free: true}]"],
        ["domains[0].label_free", "has 3", "domain 0's"],
    ),
    (
        "multi-domain: a domain with another crop size",
        ["train", "{t}/cct.yaml", "domains=[{crop_size: 64}]"],
        ["domains[0].crop_size", "96"],
    ),
    (
        "unknown perturbation name",
        ["train", "{t}/cct.yaml", "perturbations.vatt=2"],
        ["perturbations.vatt", "did you mean 'vat'"],
    ),
    (
        "n_shot + n_query larger than a class",
        ["fewshot-eval", "{t}/runs/sclrun", "--shots", "5", "--queries", "15"],
        ["4"],
    ),
    (
        "ways larger than the number of classes",
        ["fewshot-eval", "{t}/runs/sclrun", "--shots", "1", "--ways", "500"],
        ["500"],
    ),
    (
        "text file without the label column",
        [
            "train",
            "{t}/rb.yaml",
            "data.dataset=csv",
            "data.train_file={t}/nolabel.csv",
            "data.eval_file={t}/nolabel.csv",
        ],
        ["nolabel.csv", "label"],
    ),
    (
        "text file with an unknown label",
        [
            "train",
            "{t}/rb.yaml",
            "data.dataset=csv",
            "data.train_file={t}/badlabel.csv",
            "data.eval_file={t}/badlabel.csv",
            "data.label_names=[positive, negative]",
        ],
        ["badlabel.csv", "maybe"],
    ),
    ("sequence length over the model's limit", ["train", "{t}/rb.yaml", "data.max_length=4096"], ["4096", "512"]),
]


@pytest.fixture(scope="module")
def outcomes(world) -> dict[str, tuple[subprocess.CompletedProcess[str], dict[str, str], dict[str, str]]]:
    """Every case's outcome (run in this process, in the fixture folder), with the digests of the files it was given
    before and after."""
    results = {}
    for name, args, _ in CASES:
        argv = [a.replace("{t}", str(world)) for a in args]
        before = digests(given_paths(world, argv))
        res = run_cli(argv, cwd=world)
        results[name] = (res, before, digests(given_paths(world, argv)))
    return results


def _assert_one_clear_error(res: subprocess.CompletedProcess[str], fragments: list[str], world: Path) -> None:
    assert res.returncode != 0, res.stdout[-1000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = error_lines(res.stderr)
    assert len(errors) == 1, res.stderr[-2000:]
    for fragment in fragments:
        assert fragment.replace("{t}", str(world)).lower() in errors[0].lower(), errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_clear_message(world, outcomes, case):
    name, _, fragments = case
    res, before, after = outcomes[name]
    _assert_one_clear_error(res, fragments, world)
    assert after == before, "an input file changed"


#: rows also run through the real entry point: the interpreter's start-up, ``python -m fewlabels`` and its exit status
ENTRY_POINT_CASES = ["config file not found", "unknown config key"]


def test_the_real_entry_point_fails_with_one_clear_message(world):
    """``python -m fewlabels`` in a fresh interpreter (both rows at once: each is mostly interpreter start-up)."""
    rows = {name: (args, fragments) for name, args, fragments in CASES if name in ENTRY_POINT_CASES}
    assert sorted(rows) == sorted(ENTRY_POINT_CASES)

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        argv = [a.replace("{t}", str(world)) for a in args]
        command = [sys.executable, "-m", "fewlabels", *argv]
        return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300, cwd=world)

    with ThreadPoolExecutor(max_workers=len(rows)) as pool:
        results = dict(zip(rows, pool.map(run, [args for args, _ in rows.values()])))
    for name, (_, fragments) in rows.items():
        assert results[name].returncode == 2, results[name].stderr[-2000:]
        _assert_one_clear_error(results[name], fragments, world)


def test_the_catalogue_is_long_enough():
    assert len(CASES) >= 30
