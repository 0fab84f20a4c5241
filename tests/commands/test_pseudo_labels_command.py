"""``fewlabels cct-pseudo-labels``: a CCT config and image-level labels in, a ``cct-cam`` run trained by the engine,
one pseudo-label PNG per unlabeled image out; a trained run reused as it is; bad flags refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from cli_cases import error_lines, run_cli
from fewlabels.cli import main
from fewlabels.engine import read_run_config

SCENES = ["data.scenes_train=6", "data.scenes_val=2", "data.scenes_size=32", "data.crop_size=32", "data.labeled=0.5"]
TINY = ["--encoder", "small_cnn", "--steps", "2", "--batch-size", "2", "--lr", "0.01"]


@pytest.fixture
def world(tmp_path):
    (tmp_path / "cct.yaml").write_text(yaml.safe_dump({"method": "cct", "output_dir": str(tmp_path / "runs")}))
    # every generated scene holds class 1 (the labels of labeled images are simply not read)
    (tmp_path / "labels.json").write_text(json.dumps({f"{i:06d}": [1] for i in range(6)}))
    return tmp_path


def _pngs(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_a_cam_run_is_trained_then_reused_for_the_same_pseudo_labels(world, capsys):
    cfg, labels = str(world / "cct.yaml"), str(world / "labels.json")
    out, run = world / "weak", world / "cam"
    status = main(
        ["cct-pseudo-labels", cfg, *SCENES, "--image-labels", labels, "--out", str(out), "--run", str(run), *TINY]
    )
    assert status == 0
    written = _pngs(out)
    assert len(written) == 3  # half of the 6 scenes are unlabeled
    for mask in written.values():
        assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) <= {0, 1, 255}
    printed = capsys.readouterr().out
    assert f"CAM classifier: {run} (2 steps, BCE" in printed
    assert f"wrote 3 pseudo-labels to {out} (dense CRF, 10 iterations)" in printed
    # the run is an engine run: its config, checkpoints and weights
    saved = read_run_config(run)
    assert saved.method == "cct-cam" and saved.model.encoder == "small_cnn"
    assert (saved.train.steps, saved.train.epochs, saved.cam.image_labels) == (2, 0.0, labels)
    assert (run / "checkpoints" / "step_00000002.pt").is_file() and (run / "model.safetensors").is_file()
    # the trained run reused: the same files, pixel for pixel
    again = world / "again"
    status = main(
        ["cct-pseudo-labels", cfg, *SCENES, "--image-labels", labels, "--out", str(again), "--from-run", str(run)]
    )
    assert status == 0
    reused = _pngs(again)
    assert reused.keys() == written.keys()
    for name in written:
        assert np.array_equal(reused[name], written[name]), name
    # without the CRF: other files, still valid
    plain = world / "plain"
    assert (
        main(
            [
                "cct-pseudo-labels",
                cfg,
                *SCENES,
                "--image-labels",
                labels,
                "--out",
                str(plain),
                "--from-run",
                str(run),
                "--no-crf",
            ]
        )
        == 0
    )
    assert "(no CRF)" in capsys.readouterr().out
    for mask in _pngs(plain).values():
        assert set(np.unique(mask).tolist()) <= {0, 1, 255}


def test_a_cam_run_is_continued_by_the_command_with_a_longer_budget(world, capsys):
    cfg, labels = str(world / "cct.yaml"), str(world / "labels.json")
    run = world / "cam"
    base = ["cct-pseudo-labels", cfg, *SCENES, "--image-labels", labels]
    assert main([*base, "--out", str(world / "a"), "--run", str(run), *TINY]) == 0
    # a longer budget on resume continues the same run (train.steps is a resumable key)
    assert main([*base, "--out", str(world / "b"), "--resume", str(run), "--steps", "3"]) == 0
    assert f"CAM classifier: {run} (3 steps" in capsys.readouterr().out
    assert read_run_config(run).train.steps == 3
    assert (run / "checkpoints" / "step_00000003.pt").is_file()


def test_a_config_of_another_method_is_refused(tmp_path, capsys):
    (tmp_path / "sup.yaml").write_text(yaml.safe_dump({"method": "supervised"}))
    status = main(["cct-pseudo-labels", str(tmp_path / "sup.yaml"), "--image-labels", "x.json", "--out", "o"])
    assert status == 2
    assert "pseudo-labels are written for cct configs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--run", "{t}/a", "--from-run", "{t}/b"], ["--from-run", "cannot be combined with --run"]),
        (["--steps", "2", "--epochs", "1"], ["--steps", "not both"]),
        (["--from-run", "{t}"], ["not a run directory"]),
        (["--crf-iterations", "-1", "--steps", "1"], ["crf.iterations", ">= 0"]),
        (["--fg-threshold", "0.01", "--steps", "1"], ["cam.bg_threshold", "fg_threshold"]),
        (["--image-labels", "{t}/cct.yaml", "--steps", "1", "--encoder", "small_cnn"], ["cct.yaml", "not a JSON"]),
    ],
    ids=[
        "two runs",
        "steps and epochs",
        "from a folder that is not a run",
        "negative CRF iterations",
        "thresholds the wrong way round",
        "labels that are not JSON",
    ],
)
def test_bad_flags_fail_with_one_error_line(world, extra, fragments):
    argv = [
        "cct-pseudo-labels",
        str(world / "cct.yaml"),
        *SCENES,
        "--image-labels",
        str(world / "labels.json"),
        "--out",
        str(world / "o"),
    ]
    res = run_cli([*argv, *[a.replace("{t}", str(world)) for a in extra]])
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    errors = error_lines(res.stderr)
    assert len(errors) == 1, res.stderr[-2000:]
    for fragment in fragments:
        assert fragment.replace("{t}", str(world)) in errors[0], errors[0]
    assert not (world / "o").exists()


def test_from_run_of_another_method_is_refused(world, tmp_path):
    run = tmp_path / "runs" / "sup"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "supervised"}))
    argv = [
        "cct-pseudo-labels",
        str(world / "cct.yaml"),
        "--image-labels",
        str(world / "labels.json"),
        "--out",
        str(world / "o"),
        "--from-run",
        str(run),
        "--lr",
        "0.1",
    ]
    res = run_cli(argv)
    errors = error_lines(res.stderr)
    assert res.returncode == 2 and len(errors) == 1
    assert "'supervised' run" in errors[0] and "cct-cam" in errors[0]
