"""Few-shot prediction on a user's folders, evaluation-only folders, the run's eval settings, spatial distillation."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_model

from cli_cases import digests, error_lines, run_cli
from fewlabels import fewshot_predict, load_fewshot_run
from fewlabels.cli import main
from fewlabels.config import write_yaml
from fewlabels.data.glyphs import GlyphsDataset
from fewlabels.methods.scl.fewshot_eval import (
    _episode_sets,
    classifier_proba,
    extract_features,
    solver_thread_count,
    support_copies,
)
from fewlabels.methods.scl.losses import contrast_distill, spatial_contrast_distill
from fewlabels.methods.scl.method import build_net
from fewlabels.methods.scl.model import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, MINI_IMAGENET_MEAN
from fewlabels.registry import config_from_dict, get_method

RUN = {
    "method": "scl",
    "model": {"backbone": "conv4"},
    "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
    "eval": {"shots": [1], "queries": 2, "val_episodes": 3, "episodes": 5, "support_augment": 0},
    "train": {"batch_size": 8},
}
CLASSES = 4  # novel glyph classes used for the support folder
SHOTS = 2  # support images per class; the other 2 of each class are queries


def _make_run(folder: Path, **eval_keys: object) -> Path:
    cfg = json.loads(json.dumps(RUN))
    cfg["eval"].update(eval_keys)
    config = config_from_dict(cfg)
    write_yaml(config, folder / "config.yaml")
    torch.manual_seed(0)
    save_model(get_method("scl")(config).build_model(), str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def glyphs() -> GlyphsDataset:
    return GlyphsDataset("novel", 32, 4, 0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, glyphs) -> dict[str, Path]:
    """Glyph PNGs: support/<class>/ (2 shots), queries/ (2 per class), and an evaluation-only folder of 6 classes."""
    root = tmp_path_factory.mktemp("glyphfolders")
    support, queries, evalonly = root / "support", root / "queries", root / "evalonly"
    for k in range(6):
        idx = np.flatnonzero(glyphs.labels == k)
        name = f"c{k}"
        for j, i in enumerate(idx):
            img = Image.fromarray(glyphs.images[i])
            (evalonly / name).mkdir(parents=True, exist_ok=True)
            img.save(evalonly / name / f"{j}.png")
            if k < CLASSES:
                if j < SHOTS:
                    (support / name).mkdir(parents=True, exist_ok=True)
                    img.save(support / name / f"{j}.png")
                else:
                    queries.mkdir(exist_ok=True)
                    img.save(queries / f"{name}_{j}.png")
    return {"support": support, "queries": queries, "evalonly": evalonly, "root": root}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("sclrun"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_with_support_equals_the_eval_classifier_on_the_same_features(run_dir, folders, glyphs, tmp_path):
    out = tmp_path / "pred.csv"
    args = ["predict", str(run_dir), str(folders["queries"]), "--support", str(folders["support"]), "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    rows = _read_csv(out)
    assert len(rows) == CLASSES * (4 - SHOTS)
    classes = [f"c{k}" for k in range(CLASSES)]
    assert list(rows[0]) == ["path", "predicted", *(f"p({c})" for c in classes)]

    # The evaluation's classifier on the evaluation's features of the same glyphs (one episode, explicit indices).
    run = load_fewshot_run(run_dir, device="cpu")
    feats = extract_features(run.model, glyphs, "cpu", 128, 0)
    idx = [np.flatnonzero(glyphs.labels == k) for k in range(CLASSES)]
    support = np.stack([i[:SHOTS] for i in idx])[None]  # [1, W, S]
    query = np.stack([i[SHOTS:] for i in idx])[None]  # [1, W, Q]
    proba = sum(
        classifier_proba(*_episode_sets(feats.features[t], support, query, 0)[:3], CLASSES)
        for t in ("pooled", "spatial")
    )
    expected = (proba[0] / 2).numpy()  # queries in class-major order = sorted file names c{k}_{j}.png
    got = np.array([[float(r[f"p({c})"]) for c in classes] for r in rows])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert [r["predicted"] for r in rows] == [classes[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)

    # From Python: one call, the same predictions.
    result = fewshot_predict(run, folders["support"], [folders["queries"]])
    assert result.labels == [r["predicted"] for r in rows]
    assert result.shots == dict.fromkeys(classes, SHOTS)


def test_predict_exact_agrees_with_the_fast_path(run_dir, folders, tmp_path):
    fast = fewshot_predict(run_dir, folders["support"], [folders["queries"]], device="cpu")
    exact = fewshot_predict(
        run_dir, folders["support"], [folders["queries"]], device="cpu", overrides=["eval.exact=true"]
    )
    np.testing.assert_allclose(fast.probabilities, exact.probabilities, atol=1e-4)
    assert fast.labels == exact.labels


def test_predict_never_writes_into_its_inputs(run_dir, folders, capsys):
    query_file = next(folders["queries"].iterdir())
    before = query_file.read_bytes()
    for out in (folders["support"] / "c0" / "p.csv", folders["queries"], query_file):
        args = ["predict", str(run_dir), str(folders["queries"]), str(query_file), "--support", str(folders["support"])]
        assert main([*args, "--out", str(out), "--device", "cpu"]) == 2
        assert "--out" in capsys.readouterr().err
    assert query_file.read_bytes() == before
    assert not (folders["support"] / "c0" / "p.csv").exists()


def test_predict_refuses_an_output_that_is_an_input_whatever_the_paths(run_dir, folders, tmp_path):
    """The CSV may not be a query or support file, nor lie in the support folder, through a hard link, a symlink or
    a relative path either: one ``error:`` line before anything is written."""
    support, queries = tmp_path / "support", tmp_path / "queries"
    shutil.copytree(folders["support"], support)
    shutil.copytree(folders["queries"], queries)
    query = sorted(queries.iterdir())[0]
    (tmp_path / "elsewhere").mkdir()
    os.link(query, tmp_path / "elsewhere/hard.csv")  # the same file as a query image
    os.link(support / "c1/0.png", tmp_path / "elsewhere/hard_support.csv")  # the same file as a support image
    (tmp_path / "elsewhere/soft.csv").symlink_to(support / "c0/0.png")
    (tmp_path / "elsewhere/linked_support").symlink_to(support, target_is_directory=True)
    outs = {
        "elsewhere/hard.csv": "overwrite the input file",
        "elsewhere/hard_support.csv": "overwrite the input file",
        "elsewhere/soft.csv": "written into the input",
        "elsewhere/linked_support": "written into the input",
        "elsewhere/../support/c1/new.csv": "written into the input",
        "queries": "written into the input",
    }
    before = digests([tmp_path])
    for out, problem in outs.items():
        args = ["predict", str(run_dir), str(queries), str(query), "--support", str(support), "--out", out]
        res = run_cli([*args, "--device", "cpu"], cwd=tmp_path)
        errors = error_lines(res.stderr)
        assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert "--out" in errors[0] and problem in errors[0], (out, errors[0])
    assert digests([tmp_path]) == before  # every input as it was, and no file written


def test_support_augmentation_uses_augmented_copies_only(run_dir, glyphs):
    # The reference augments every copy of a support image: with N copies none of the support rows is the raw image.
    assert support_copies(0) == [0] and support_copies(3) == [1, 2, 3]
    run = load_fewshot_run(run_dir, device="cpu")
    feats = extract_features(run.model, glyphs, "cpu", 128, augment_copies=2, seed=0)
    support = np.array([[[0], [4]]])
    query = np.array([[[1], [5]]])
    xs, ys, _, _ = _episode_sets(feats.features["pooled"], support, query, 2)
    assert xs.shape == (1, 4, feats.features["pooled"].shape[2]) and ys.tolist() == [[0, 1, 0, 1]]
    raw = feats.features["pooled"][0][[0, 4]]
    assert torch.cdist(xs[0], raw).min() > 1e-4


def test_fewshot_eval_on_an_evaluation_only_folder(run_dir, folders, capsys):
    # No splits.json: every class folder is a test class; the run's 'train' split is never read.
    over = ["data.dataset=fewshot-folder", f"data.root={folders['evalonly']}", "data.image_size=32"]
    out = folders["root"] / "evalonly.json"
    assert main(["fewshot-eval", str(run_dir), *over, "--device", "cpu", "--out", str(out)]) == 0
    first = json.loads(out.read_text())
    assert first["episodes"] == 5 and 0.0 <= first["acc_1shot"] <= 100.0
    # A split file naming only test classes is the same evaluation-only folder.
    split_file = folders["root"] / "only_test.json"
    split_file.write_text(json.dumps({"test": [f"c{k}" for k in range(6)]}))
    assert main(["fewshot-eval", str(run_dir), *over, f"data.split_file={split_file}", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["acc_1shot"] == first["acc_1shot"]
    # data check accepts an evaluation-only folder (classes of 20 images: enough for 5-shot 15-query episodes)
    big = folders["root"] / "evalonly_check"
    for k in range(5):
        (big / f"c{k}").mkdir(parents=True)
        for j, f in enumerate(sorted((folders["evalonly"] / f"c{k}").iterdir()) * 5):
            (big / f"c{k}" / f"{j}.png").write_bytes(f.read_bytes())
    capsys.readouterr()
    assert main(["data", "check", "fewshot-folder", str(big)]) == 0
    report = capsys.readouterr().out
    assert "OK" in report and "test classes" in report and "problem" not in report


def test_fewshot_eval_reads_the_run_eval_section_and_flags_override(tmp_path):
    run = _make_run(tmp_path, features="pooled", support_augment=2)
    assert main(["fewshot-eval", str(run), "--device", "cpu"]) == 0
    result = json.loads((run / "fewshot_eval_test.json").read_text())
    assert result["features"] == "pooled" and result["support_augment"] == 2
    assert result["weights"].endswith("model.safetensors")  # --weights last is the default
    assert main(["fewshot-eval", str(run), "--features", "both", "--support-augment", "0", "--device", "cpu"]) == 0
    result = json.loads((run / "fewshot_eval_test.json").read_text())
    assert result["features"] == "both" and result["support_augment"] == 0


def test_normalisation_statistics_are_the_reference_per_dataset_and_stay_the_trained_runs(tmp_path):
    def net(dataset: str):
        cfg = config_from_dict(
            {"method": "scl", "model": {"backbone": "conv4"}, "data": {"dataset": dataset, "root": "/x"}}
        )
        return build_net(cfg, 3)

    assert torch.allclose(net("cifar-fs").mean.flatten(), torch.tensor(CIFAR_MEAN))
    assert torch.allclose(net("fc100").std.flatten(), torch.tensor(CIFAR_STD))
    assert torch.allclose(net("mini-imagenet").mean.flatten(), torch.tensor(MINI_IMAGENET_MEAN))
    assert torch.allclose(net("tiered-imagenet").mean.flatten(), torch.tensor(MINI_IMAGENET_MEAN))
    assert torch.allclose(net("glyphs").mean.flatten(), torch.tensor(IMAGENET_MEAN))
    # A mini-ImageNet run evaluated on another dataset keeps mini-ImageNet's statistics.
    cfg = config_from_dict(
        {"method": "scl", "model": {"backbone": "conv4"}, "data": {"dataset": "mini-imagenet", "root": "/x"}}
    )
    write_yaml(cfg, tmp_path / "config.yaml")
    save_model(build_net(cfg, 7), str(tmp_path / "model.safetensors"))
    other = config_from_dict(
        {"method": "scl", "model": {"backbone": "conv4"}, "data": {"dataset": "fewshot-folder", "root": "/y"}}
    )
    method = get_method("scl")(other)
    method.prepare_inference(tmp_path, tmp_path / "model.safetensors")
    assert method.num_base_classes == 7 and other.model.normalisation == "mini-imagenet"


def test_spatial_distillation_is_per_position():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 6, 3, 3, generator=gen).double(), torch.randn(2, 6, 3, 3, generator=gen).double()
    by_hand = np.mean(
        [
            2 - 2 * F.cosine_similarity(s[b, :, i, j], t[b, :, i, j], dim=0).item()
            for b in range(2)
            for i in range(3)
            for j in range(3)
        ]
    )
    assert spatial_contrast_distill(s, t).item() == pytest.approx(by_hand, abs=1e-12)
    assert abs(contrast_distill(s, t).item() - by_hand) > 1e-3  # the old flattened cosine is another quantity


def test_solver_thread_count_fits_the_work():
    small = torch.zeros(100, 25, 8)  # 100 episodes, 5-way 5-shot: far below one thread's worth
    assert solver_thread_count(small, 5, available=8) == 1
    assert solver_thread_count(torch.zeros(600, 125, 8), 5, available=8) == 1  # 600 episodes, 5 aug copies
    big = torch.zeros(3500, 125, 8)  # 2 * 3500 * 125 * 126 * 5 flops / 2^28 = 2.05
    assert solver_thread_count(big, 5, available=8) == 2
    assert solver_thread_count(big, 5, available=1) == 1


def test_predict_with_support_works_for_protonet_runs(tmp_path, folders):
    cfg = json.loads(json.dumps(RUN))
    cfg.update(method="protonet", train={"batch_size": 1})
    config = config_from_dict(cfg)
    write_yaml(config, tmp_path / "config.yaml")
    torch.manual_seed(0)
    save_model(get_method("protonet")(config).build_model(), str(tmp_path / "model.safetensors"))
    result = fewshot_predict(tmp_path, folders["support"], [folders["queries"]], device="cpu")
    assert result.probabilities.shape == (CLASSES * (4 - SHOTS), CLASSES)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, atol=1e-6)


def test_predict_takes_eval_overrides_among_its_inputs(run_dir, folders, tmp_path):
    out = tmp_path / "pooled.csv"
    args = [
        "predict",
        str(run_dir),
        str(folders["queries"]),
        "eval.features=pooled",
        "--support",
        str(folders["support"]),
    ]
    assert main([*args, "--out", str(out), "--device", "cpu"]) == 0
    expected = fewshot_predict(
        run_dir, folders["support"], [folders["queries"]], device="cpu", overrides=["eval.features=pooled"]
    )
    rows = _read_csv(out)
    assert [r["predicted"] for r in rows] == expected.labels
    np.testing.assert_allclose(
        [[float(r[f"p({c})"]) for c in expected.classes] for r in rows], expected.probabilities, atol=2e-6
    )
