"""Bad inputs to every command that reads a run, a dataset or a file (issue 17), and the data-loss fixes.

Each catalogue row runs the real CLI (``main``, in this process) and must exit non-zero with exactly one ``error:``
line naming the problem, no traceback, and no change to any file it was given (sha256 before and after). One tiny
supervised run on a seg-folder (trained once per module, its data then moved away) and one tiny few-shot run serve
every row.

The rows of ``train`` beyond these and the run-directory faults are in ``tests/test_bad_inputs.py`` and
``tests/engine/test_faults.py``; ``--help`` of every subcommand is ``tests/commands/test_cli_help.py``.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open

from cli_cases import digests, error_lines, given_paths, run_cli, tiny_scl_config
from fewlabels.cli import main
from fewlabels.data.base import DataError
from fewlabels.data.common import read_rgb
from fewlabels.data.registry import load_segmentation
from fewlabels.data.seg_folder import FolderSegmentation
from fewlabels.registry import load_config
from fewlabels.viz import colorize

SIZE = 32


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _truncated_png(path: Path, array: np.ndarray) -> None:
    """A PNG whose header reads but whose pixels do not decode."""
    _png(path, array)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _seg_folder(root: Path, n: int = 4, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[:, SIZE // 2 :] = 1
        _png(root / f"images/im{i}.png", image)
        _png(root / f"masks/im{i}.png", mask)
        images.append(image)
    return images


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny trained runs (supervised on a seg-folder and AC on an image-folder, whose data are then moved away;
    few-shot on glyphs) and the broken files and folders of the catalogue."""
    t = tmp_path_factory.mktemp("cmds")
    images = _seg_folder(t / "train_data")
    _seg_folder(t / "ac_data")  # the same images (and masks, to match clusters to classes) as an image-folder
    (t / "ac_data/classes.txt").write_text("left\nright\n")
    ac = {
        "method": "ac",
        "name": "acrun",
        "output_dir": str(t / "runs"),
        "model": {"widths": [4, 4], "decoder_blocks": 0},
        "loss": {"displacement": 2},
        "data": {"dataset": "image-folder", "root": str(t / "ac_data"), "input_size": 16, "eval_batch_size": 2},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 1},
    }
    (t / "ac.yaml").write_text(yaml.safe_dump(ac))
    sup = {
        "method": "supervised",
        "output_dir": str(t / "runs"),
        "model": {"encoder": "small_cnn"},
        "data": {"dataset": "seg-folder", "root": str(t / "train_data"), "crop_size": SIZE, "scale": [1.0, 1.0]},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 1},
        "eval": {"batch_size": 2},
    }
    (t / "sup.yaml").write_text(yaml.safe_dump(sup))
    (t / "scl.yaml").write_text(yaml.safe_dump(tiny_scl_config(t / "runs")))
    (t / "cct.yaml").write_text(yaml.safe_dump({"method": "cct", "output_dir": str(t / "runs")}))
    for argv in (
        ["train", str(t / "sup.yaml"), "name=segrun"],
        ["train", str(t / "scl.yaml")],
        ["train", str(t / "ac.yaml")],
    ):
        res = run_cli(argv)
        assert res.returncode == 0, res.stderr[-3000:]
    # AC's predictions of its first two images while its data is in place: those of photos/a.png and b.png below
    ac_images = [str(t / f"ac_data/images/im{i}.png") for i in (0, 1)]
    res = run_cli(["predict", str(t / "runs/acrun"), *ac_images, "--out", str(t / "ac_with_data")])
    assert res.returncode == 0, res.stderr[-3000:]
    # The runs' training data are gone from where they were trained (item 9): they now live elsewhere.
    shutil.move(t / "train_data", t / "moved_data")
    shutil.move(t / "ac_data", t / "ac_moved")
    run = t / "runs/segrun"
    # a run whose weight files and checkpoints are all unreadable
    shutil.copytree(run, t / "runs/allbad", ignore=shutil.ignore_patterns(".lock"))
    (t / "runs/allbad/best.safetensors").write_bytes(b"")
    (t / "runs/allbad/model.safetensors").write_bytes(b"\x00garbage" * 10)
    shutil.rmtree(t / "runs/allbad/checkpoints")
    # inputs to predict on
    _png(t / "photos/a.png", images[0])
    _png(t / "photos/b.png", images[1])
    (t / "corrupt_in").mkdir()
    (t / "corrupt_in/bad.png").write_bytes(b"not a png")
    (t / "afile.txt").write_text("an existing file\n")
    (t / "notarun").mkdir()
    # a training folder whose every image fails to decode (read by DataLoader workers)
    _seg_folder(t / "corrupt_train")
    for p in (t / "corrupt_train/images").iterdir():
        _truncated_png(p, images[0])
    # folders for `data check`
    _seg_folder(t / "dc_corrupt")
    _truncated_png(t / "dc_corrupt/images/im2.png", images[2])
    _seg_folder(t / "dc_jpgmask")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(t / "dc_jpgmask/masks/im0.jpg")
    # a file that is not weights, id lists
    (t / "garbage.pth").write_bytes(b"\x80\x04garbage, not a state dict")
    (t / "unknown_ids.txt").write_text("im0\nzzz\n")
    return t


SEG_TRAIN = ["train", "{t}/sup.yaml", "data.root={t}/moved_data"]
GPU = torch.cuda.is_available()

#: (id, CLI arguments with {t} for the fixture folder, fragments the error line must contain)
CASES: list[tuple[str, list[str], list[str]]] = [
    # --- train ---
    (
        "train: a garbage model.pretrained file",
        [*SEG_TRAIN, "model.encoder=resnet18", "model.pretrained={t}/garbage.pth"],
        ["{t}/garbage.pth", "not a readable weights file"],
    ),
    (
        "train: a corrupt image read by DataLoader workers",
        [
            "train",
            "{t}/sup.yaml",
            "data.root={t}/corrupt_train",
            "train.num_workers=2",
            "train.steps=1",
            "name=corrupt",
        ],
        ["{t}/corrupt_train/images/im", "cannot decode"],
    ),
    (
        "train: a seg-folder labeled_list that does not exist",
        [*SEG_TRAIN, "data.labeled_list={t}/nonexistent.txt"],
        ["{t}/nonexistent.txt", "not found"],
    ),
    (
        "train: a seg-folder labeled_list naming an unknown image",
        [*SEG_TRAIN, "data.labeled_list={t}/unknown_ids.txt"],
        ["unknown_ids.txt", "'zzz'"],
    ),
    (
        "train: an id list for a dataset that has none",
        ["train", "{t}/sup.yaml", "data.dataset=scenes", "data.labeled_list={t}/unknown_ids.txt"],
        ["data.labeled_list", "not supported"],
    ),
    (
        "train: an unlabeled_list without a labeled_list",
        [*SEG_TRAIN, "data.unlabeled_list={t}/unknown_ids.txt"],
        ["data.unlabeled_list", "needs data.labeled_list"],
    ),
    # --- eval ---
    ("eval: the training data is not where it was", ["eval", "{t}/runs/segrun"], ["train_data", "data.root="]),
    (
        "eval: an override that changes the architecture",
        ["eval", "{t}/runs/segrun", "model.encoder=resnet18"],
        ["model.encoder", "cannot be overridden"],
    ),
    ("eval: an unknown override key", ["eval", "{t}/runs/segrun", "data.rooot=x"], ["data.rooot"]),
    (
        "eval: every weights file unreadable and no checkpoint",
        ["eval", "{t}/runs/allbad", "data.root={t}/moved_data"],
        ["no usable weights", "best.safetensors", "model.safetensors"],
    ),
    ("eval: a folder that is not a run", ["eval", "{t}/notarun"], ["not a run directory"]),
    # --- predict ---
    (
        "predict: --out is the folder of the input files (would overwrite them)",
        ["predict", "{t}/runs/segrun", "{t}/photos/a.png", "{t}/photos/b.png", "--out", "{t}/photos"],
        ["overwrite the input file", "{t}/photos/a.png"],
    ),
    (
        "predict: --out names an existing file",
        ["predict", "{t}/runs/segrun", "{t}/photos", "--out", "{t}/afile.txt"],
        ["--out", "existing file"],
    ),
    (
        "predict: --out inside an input folder",
        ["predict", "{t}/runs/segrun", "{t}/photos", "--out", "{t}/photos/preds"],
        ["inside the input folder"],
    ),
    (
        "predict: an override that changes the architecture",
        ["predict", "{t}/runs/segrun", "{t}/photos", "model.encoder=resnet18", "--out", "{t}/o_arch"],
        ["model.encoder", "cannot be overridden"],
    ),
    (
        "predict: an image that fails to decode",
        ["predict", "{t}/runs/segrun", "{t}/corrupt_in", "--out", "{t}/o_corrupt"],
        ["{t}/corrupt_in/bad.png"],
    ),
    (
        "predict: every weights file unreadable",
        ["predict", "{t}/runs/allbad", "{t}/photos", "--out", "{t}/o_allbad"],
        ["no usable weights"],
    ),
    ("predict: a missing input", ["predict", "{t}/runs/segrun", "{t}/absent", "--out", "{t}/o_abs"], ["not found"]),
    # --- report ---
    ("report: a folder that is not a run", ["report", "{t}/notarun"], ["not a run directory"]),
    (
        "report: an override that changes the architecture",
        ["report", "{t}/runs/segrun", "model.output_stride=16"],
        ["model.output_stride", "cannot be overridden"],
    ),
    # --- fewshot-eval ---
    ("fewshot-eval: --episodes 0", ["fewshot-eval", "{t}/runs/sclrun", "--episodes", "0"], ["episodes"]),
    ("fewshot-eval: a folder that is not a run", ["fewshot-eval", "{t}/notarun"], ["not a run directory"]),
    # --- data check ---
    ("data check: a missing root", ["data", "check", "seg-folder", "{t}/absent"], ["{t}/absent", "not found"]),
    (
        "data check: an image that fails to decode",
        ["data", "check", "seg-folder", "{t}/dc_corrupt"],
        ["{t}/dc_corrupt/images/im2.png"],
    ),
    (
        "data check: a mask with an unexpected extension",
        ["data", "check", "seg-folder", "{t}/dc_jpgmask"],
        ["unexpected extension"],
    ),
    # --- text and few-shot tools ---
    ("peft-count: a model that does not exist", ["peft-count", "{t}/absent"], ["{t}/absent"]),
    ("export-delta: a folder that is not a run", ["export-delta", "{t}/notarun"], ["not a run directory"]),
    (
        "bias-changes: a folder that is not a run",
        ["bias-changes", "{t}/notarun", "--out", "{t}/bias.png"],
        ["not a run directory"],
    ),
    (
        "predict-delta: a delta file that does not exist",
        ["predict-delta", "{t}/absent.safetensors", "{t}/afile.txt", "--out", "{t}/o_delta"],
        ["{t}/absent.safetensors"],
    ),
    (
        "cct-pseudo-labels: an image-labels file that does not exist",
        ["cct-pseudo-labels", "{t}/cct.yaml", "--image-labels", "{t}/absent.json", "--out", "{t}/pl"],
        ["{t}/absent.json"],
    ),
]
if not GPU:
    CASES += [
        ("eval: --device cuda without a GPU", ["eval", "{t}/runs/segrun", "--device", "cuda"], ["cuda", "no GPU"]),
        (
            "predict: --device cuda without a GPU",
            ["predict", "{t}/runs/segrun", "{t}/photos", "--out", "{t}/o_cuda", "--device", "cuda"],
            ["cuda", "no GPU"],
        ),
        ("report: --device cuda without a GPU", ["report", "{t}/runs/segrun", "--device", "cuda"], ["cuda", "no GPU"]),
        (
            "fewshot-eval: --device cuda without a GPU",
            ["fewshot-eval", "{t}/runs/sclrun", "--device", "cuda"],
            ["cuda", "no GPU"],
        ),
    ]


@pytest.fixture(scope="module")
def outcomes(world: Path) -> dict[str, tuple[subprocess.CompletedProcess, dict[str, str], dict[str, str]]]:
    """Every case's outcome, with the digests of the files it was given before and after."""
    argvs = {name: [a.replace("{t}", str(world)) for a in args] for name, args, _ in CASES}
    before = {name: digests(given_paths(world, argv)) for name, argv in argvs.items()}
    results = {name: run_cli(argv) for name, argv in argvs.items()}
    return {name: (results[name], before[name], digests(given_paths(world, argvs[name]))) for name in argvs}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_changes_no_file(world, outcomes, case):
    name, _, fragments = case
    res, before, after = outcomes[name]
    assert res.returncode != 0, res.stdout[-1000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = error_lines(res.stderr)
    assert len(errors) == 1, res.stderr[-2000:]
    assert "Warning: " not in res.stderr, res.stderr[-2000:]  # a library's warning above the error line
    for fragment in fragments:
        assert fragment.replace("{t}", str(world)).lower() in errors[0].lower(), errors[0]
    assert after == before, "an input file changed"


def test_every_command_that_reads_input_has_a_row():
    commands = {args[0] if args[0] != "data" else "data check" for _, args, _ in CASES}
    assert commands >= {
        "train",
        "eval",
        "predict",
        "report",
        "fewshot-eval",
        "data check",
        "peft-count",
        "export-delta",
        "bias-changes",
        "predict-delta",
        "cct-pseudo-labels",
    }


# --- what must work, and did not (items 1, 2, 5, 6, 9) -------------------------------------------------------------
def test_a_trained_run_predicts_without_its_training_data(world, tmp_path):
    """Item 9: the data is gone from its path; predict needs only the classes (from the run), eval and report take
    data.root=... to find it."""
    assert not (world / "train_data").exists()
    res = run_cli(["predict", str(world / "runs/segrun"), str(world / "photos"), "--out", str(tmp_path / "p")], world)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    moved = f"data.root={world / 'moved_data'}"
    res = run_cli(["eval", str(world / "runs/segrun"), moved], world)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "miou" in json.loads(res.stdout)["metrics"]
    res = run_cli(["report", str(world / "runs/segrun"), moved], world)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "predictions.png" in (world / "runs/segrun/report.md").read_text()


def test_an_ac_run_predicts_without_its_training_data(world, tmp_path):
    """AC: the clusters come from the run's saved head and their classes from the matching of its last evaluation,
    so predict reads no data; the predictions are those made while the data was in place."""
    assert not (world / "ac_data").exists()
    res = run_cli(["predict", str(world / "runs/acrun"), str(world / "photos"), "--out", str(tmp_path / "p")], world)
    assert res.returncode == 0, res.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert written == ["a_clusters.png", "a_colour.png", "b_clusters.png", "b_colour.png"]
    with safe_open(str(world / "runs/acrun/best.safetensors"), framework="pt") as fh:
        mapping = fh.get_tensor("cluster_to_class").numpy()
    assert sorted(mapping.tolist()) == [0, 1]  # the evaluation matched the 2 clusters to the 2 classes
    for name, same_image in (("a", "im0"), ("b", "im1")):
        clusters = np.asarray(Image.open(tmp_path / f"p/{name}_clusters.png"))
        assert clusters.shape == (SIZE, SIZE) and set(np.unique(clusters).tolist()) <= {0, 1}
        with_data = np.asarray(Image.open(world / f"ac_with_data/{same_image}_clusters.png"))
        np.testing.assert_array_equal(clusters, with_data)
        colour = np.asarray(Image.open(tmp_path / f"p/{name}_colour.png"))
        np.testing.assert_array_equal(colour, colorize(mapping[clusters].astype(np.uint8), 2))
    res = run_cli(["eval", str(world / "runs/acrun"), f"data.root={world / 'ac_moved'}"], world)
    assert res.returncode == 0, res.stderr[-3000:]
    # two clusters, two classes: the better of the two matchings is right on at least half of the pixels
    assert 0.5 <= json.loads(res.stdout)["metrics"]["pixel_accuracy"] <= 1.0


def test_predict_refuses_to_overwrite_an_input_file_whatever_the_paths(world, tmp_path):
    """Item 1: ``predict RUN dir/*.png --out dir`` wrote the masks over the photos."""
    photos = tmp_path / "photos"
    shutil.copytree(world / "photos", photos)
    before = digests([photos])
    res = run_cli(
        ["predict", str(world / "runs/segrun"), *map(str, sorted(photos.glob("*.png"))), "--out", str(photos)], tmp_path
    )
    assert res.returncode == 2 and "overwrite the input file" in res.stderr, res.stderr[-2000:]
    assert digests([photos]) == before and sorted(p.name for p in photos.iterdir()) == ["a.png", "b.png"]
    # an output that is an input through a hard link or a symlink, from another folder
    (tmp_path / "hard").mkdir()
    os.link(photos / "a.png", tmp_path / "hard/a.png")
    (tmp_path / "soft").mkdir()
    (tmp_path / "soft/b_overlay.png").symlink_to(photos / "b.png")
    before = digests([tmp_path])
    for out in ("hard", "soft"):
        res = run_cli(["predict", str(world / "runs/segrun"), str(photos), "--out", out], tmp_path)
        assert res.returncode == 2 and len(error_lines(res.stderr)) == 1, res.stderr[-2000:]
        assert "overwrite the input file" in res.stderr and str(photos) in res.stderr, res.stderr[-2000:]
    assert digests([tmp_path]) == before  # and nothing written: no new file either


def test_predict_mirrors_the_input_tree_and_counts_what_is_on_disk(world, tmp_path):
    """Item 2: ``a/x.png``, ``b/x.png`` and ``a/x.jpg`` collided in one flat folder; the count said 8 for 4 files."""
    tree = tmp_path / "tree"
    image = read_rgb(world / "photos/a.png")
    _png(tree / "a/x.png", image)
    _png(tree / "b/x.png", image)
    Image.fromarray(image).save(tree / "a/x.jpg")
    _png(tree / "b/deeper/y.png", image)
    out = tmp_path / "out"
    res = run_cli(["predict", str(world / "runs/segrun"), str(tree), "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "a/x_jpg.png",
        "a/x_jpg_overlay.png",
        "a/x_png.png",
        "a/x_png_overlay.png",
        "b/deeper/y.png",
        "b/deeper/y_overlay.png",
        "b/x.png",
        "b/x_overlay.png",
    ]
    assert f"wrote {len(written)} files" in res.stdout


def _mode_images(folder: Path, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The same picture saved as 16-bit grey, 8-bit grey, palette, RGBA and grey+alpha; the expected RGB of each."""
    grey8 = rgb[..., 0]
    grey16 = grey8.astype(np.uint16) * 257  # 0..255 -> 0..65535 exactly
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey16).save(folder / "grey16.png")
    Image.fromarray(grey8).save(folder / "grey8.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(folder / "palette.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(np.dstack([grey8, np.full(grey8.shape, 9, np.uint8)]), "LA").save(folder / "la.png")
    grey3 = np.repeat(grey8[:, :, None], 3, axis=2)
    palette = np.asarray(Image.open(folder / "palette.png").convert("RGB"))
    return {"grey16": grey3, "grey8": grey3, "palette": palette, "rgba": rgb, "la": grey3}


def test_16_bit_palette_rgba_and_grey_images_are_read_correctly_everywhere(world, tmp_path):
    """Item 5: a 16-bit PNG was read as an all-white image by data check, training and predict."""
    rgb = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    expected = _mode_images(tmp_path / "modes", rgb)
    for name, want in expected.items():
        np.testing.assert_array_equal(read_rgb(tmp_path / f"modes/{name}.png"), want, err_msg=name)
    # training reader: a seg-folder whose image is 16-bit
    _seg_folder(tmp_path / "seg16", n=2)
    shutil.copy(tmp_path / "modes/grey16.png", tmp_path / "seg16/images/im0.png")
    sample = FolderSegmentation(tmp_path / "seg16")[0]
    torch.testing.assert_close(sample["image"][0], torch.from_numpy(expected["grey16"][..., 0]).float() / 255)
    assert float(sample["image"].mean()) < 0.9  # not the all-white image of Pillow's clipping
    # data check decodes it without a problem
    assert main(["data", "check", "seg-folder", str(tmp_path / "seg16")]) == 0
    # predict: the 16-bit image gives the prediction of its 8-bit twin
    out16, out8 = tmp_path / "p16", tmp_path / "p8"
    run = str(world / "runs/segrun")
    assert run_cli(["predict", run, str(tmp_path / "modes/grey16.png"), "--out", str(out16)], tmp_path).returncode == 0
    assert run_cli(["predict", run, str(tmp_path / "modes/grey8.png"), "--out", str(out8)], tmp_path).returncode == 0
    np.testing.assert_array_equal(
        np.asarray(Image.open(out16 / "grey16.png")), np.asarray(Image.open(out8 / "grey8.png"))
    )


def test_a_floating_point_image_is_refused_by_path(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif.*floating-point"):
        read_rgb(tmp_path / "f.tif")


def _seg_options(world: Path, **data: object) -> tuple[object, object]:
    overrides = [f"data.{k}={v}" for k, v in data.items()]
    cfg = load_config(str(world / "sup.yaml"), [f"data.root={world / 'moved_data'}", *overrides])
    return cfg.data.dataset, cfg.data.options()  # type: ignore[attr-defined]


def test_seg_folder_honours_labeled_lists_and_seeded_draws(world, tmp_path):
    """Item 6: data.labeled, labeled_list, unlabeled_list and split_seed were ignored for seg-folder."""
    data = load_segmentation(*_seg_options(world))  # type: ignore[arg-type]
    assert len(data.labeled) == 4 and len(data.unlabeled) == 4  # default: every masked image, every image
    (tmp_path / "lab.txt").write_text("im2\nim0\n")
    (tmp_path / "unl.txt").write_text("im3\n")
    data = load_segmentation(*_seg_options(world, labeled_list=tmp_path / "lab.txt"))  # type: ignore[arg-type]
    assert [data.labeled[i]["id"] for i in range(len(data.labeled))] == ["im2", "im0"]
    assert sorted(data.unlabeled[i]["id"] for i in range(len(data.unlabeled))) == ["im1", "im3"]
    data = load_segmentation(
        *_seg_options(world, labeled_list=tmp_path / "lab.txt", unlabeled_list=tmp_path / "unl.txt")  # type: ignore[arg-type]
    )
    assert [data.unlabeled[i]["id"] for i in range(len(data.unlabeled))] == ["im3"]
    draws = {}
    for seed in range(6):
        data = load_segmentation(*_seg_options(world, labeled=2, split_seed=seed))  # type: ignore[arg-type]
        draws[seed] = tuple(data.labeled[i]["id"] for i in range(len(data.labeled)))
        assert len(draws[seed]) == 2
    assert len(set(draws.values())) > 1  # the seed draws
    again = load_segmentation(*_seg_options(world, labeled=2, split_seed=0))  # type: ignore[arg-type]
    assert tuple(again.labeled[i]["id"] for i in range(2)) == draws[0]
    with pytest.raises(DataError, match="nonexistent.txt"):
        load_segmentation(*_seg_options(world, labeled_list=tmp_path / "nonexistent.txt"))  # type: ignore[arg-type]


def test_an_unreadable_best_weights_file_falls_back_with_a_warning(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world / "runs/segrun", run, ignore=shutil.ignore_patterns(".lock"))
    size = (run / "best.safetensors").stat().st_size
    for content in (b"", b"garbage" * 20, (world / "runs/segrun/best.safetensors").read_bytes()[: size // 2]):
        (run / "best.safetensors").write_bytes(content)
        res = run_cli(["predict", str(run), str(world / "photos"), "--out", str(tmp_path / "out")], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "best.safetensors" in res.stderr and "error:" not in res.stderr
    (run / "model.safetensors").write_bytes(b"")  # then the last valid checkpoint
    res = run_cli(["predict", str(run), str(world / "photos"), "--out", str(tmp_path / "out2")], tmp_path)
    assert res.returncode == 0 and "checkpoint" in res.stderr, res.stderr[-3000:]


# --- read-only places (patched in this process: permissions do not bind root) ----------------------------------------
@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """``read_only(root)``: every open of a file below ``root`` for writing (and every mkdir there) fails with
    EROFS, as on a read-only mount."""
    roots: list[Path] = []
    real_os_open, real_open, real_mkdir = os.open, builtins.open, os.mkdir

    def inside(path: object) -> bool:
        return isinstance(path, str | os.PathLike) and any(
            Path(path).resolve().is_relative_to(r)
            for r in roots  # type: ignore[arg-type]
        )

    def refuse(path: object) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def os_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if any(c in mode for c in "wax+") and inside(file):
            raise refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if inside(path):
            raise refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)
    yield lambda root: roots.append(root.resolve())


def test_eval_of_a_read_only_run_prints_the_metrics_and_one_error_line(world, cli, read_only):
    run = world / "runs/segrun"
    before = digests([run])
    read_only(run)
    code, out, errors = cli("eval", str(run), f"data.root={world / 'moved_data'}", "--device", "cpu")
    assert code == 2 and len(errors) == 1, errors
    assert "eval_best.json" in errors[0] and "Read-only file system" in errors[0] and "printed above" in errors[0]
    assert "miou" in json.loads(out)["metrics"]
    assert digests([run]) == before


def test_report_of_a_read_only_run_is_one_error_line(world, cli, read_only):
    run = world / "runs/segrun"
    shutil.rmtree(run / "report", ignore_errors=True)
    before = digests([run])
    read_only(run)
    code, _, errors = cli("report", str(run), "--device", "cpu")
    assert code == 2 and len(errors) == 1 and "Read-only file system" in errors[0], errors
    assert digests([run]) == before


def test_predict_into_a_read_only_place_is_one_error_line(world, cli, read_only, tmp_path):
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")
    code, _, errors = cli("predict", str(world / "runs/segrun"), str(world / "photos"), "--out", str(tmp_path / "ro/p"))
    assert code == 2 and len(errors) == 1, errors
    assert "Read-only file system" in errors[0] and "--out" in errors[0], errors


def test_data_check_decodes_every_image_with_a_progress_bar(world):
    """``data check`` opens every image in full (labeled, unlabeled, validation), showing its progress on stderr."""
    res = run_cli(["data", "check", "seg-folder", str(world / "moved_data")])
    assert res.returncode == 0, res.stdout + res.stderr
    counts = dict(line.strip().rsplit(None, 1) for line in res.stdout.splitlines()[1:] if line.startswith("  "))
    assert counts["images decoded"] == "4"
    assert "decoding images" in res.stderr and "error:" not in res.stderr
