"""Tests of fewlabels.viz: colour values on known inputs and valid PNGs from every plotting function."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels import viz


def _assert_png(path: Path, expected_mode: str = "RGBA") -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode == expected_mode
        img.load()  # decodes the whole file: a truncated PNG fails here
        arr = np.asarray(img)
        assert arr.std() > 0  # something was drawn
        return img.size


def test_palette_matches_the_pascal_voc_colour_map():
    pal = viz.palette(21)
    assert pal.shape == (21, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0]  # background
    assert pal[1].tolist() == [128, 0, 0]  # aeroplane
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[4].tolist() == [0, 0, 128]
    assert pal[8].tolist() == [64, 0, 0]  # bit 3 -> second red bit
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[20].tolist() == [0, 64, 128]  # tv/monitor
    full = viz.palette(256)
    assert full[254].tolist() == [96, 224, 192]
    assert full[255].tolist() == [255, 255, 255]  # ignore index drawn white
    assert len({tuple(c) for c in full[:255].tolist()}) == 255  # distinct colours
    with pytest.raises(ValueError):
        viz.palette(0)


def test_colorize_maps_classes_and_ignore_index():
    mask = np.array([[0, 1, 255], [2, 20, 1]], dtype=np.uint8)
    out = viz.colorize(mask, 21)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [128, 0, 0]
    assert out[0, 2].tolist() == [255, 255, 255]
    assert out[1, 0].tolist() == [0, 128, 0]
    assert out[1, 1].tolist() == [0, 64, 128]
    np.testing.assert_array_equal(viz.colorize(torch.from_numpy(mask.astype(np.int64)), 21), out)
    with pytest.raises(ValueError, match=r"values \[7\]"):
        viz.colorize(np.array([[0, 7]]), 3)
    with pytest.raises(ValueError, match="2-D"):
        viz.colorize(np.zeros((1, 2, 2), dtype=np.int64), 3)


def test_overlay_blends_and_leaves_ignored_pixels_untouched():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 1], [255, 2]])
    out = viz.overlay(image, mask, 3, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [50, 50, 50]  # (100 + 0) / 2
    assert out[0, 1].tolist() == [114, 50, 50]  # (100 + 128) / 2, (100 + 0) / 2
    assert out[1, 0].tolist() == [100, 100, 100]  # ignored
    assert out[1, 1].tolist() == [50, 114, 50]
    np.testing.assert_array_equal(viz.overlay(image, mask, 3, alpha=0.0), image)
    grey = viz.overlay(image[:, :, 0], mask, 3, alpha=1.0)
    assert grey[0, 1].tolist() == [128, 0, 0]
    with pytest.raises(ValueError, match="does not match"):
        viz.overlay(image, np.zeros((3, 2), dtype=np.int64), 3)
    with pytest.raises(ValueError, match="uint8"):
        viz.overlay(image.astype(np.float32), mask, 3)


def test_save_image_grid_writes_a_png(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    mask = viz.colorize(np.arange(80).reshape(8, 10) % 4, 4)
    grey = np.linspace(0, 1, 80).reshape(8, 10)
    rows = [[image, mask, grey], [image, mask, grey]]
    out = viz.save_image_grid(tmp_path / "sub" / "grid.png", rows, ["image", "target", "prediction"])
    assert out == tmp_path / "sub" / "grid.png"
    width, height = _assert_png(out)
    assert width > height  # 3 columns, 2 rows
    with pytest.raises(ValueError, match="column titles"):
        viz.save_image_grid(tmp_path / "bad.png", rows, ["only one"])


def test_plot_curves_writes_one_panel_per_metric(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "split": "train", "loss": 1.0 / (s + 1), "lr": 0.01} for s in range(0, 50, 10)]
    lines += [{"step": s, "split": "val", "miou": 0.1 * s / 10, "loss": 0.5} for s in (20, 40)]
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    out = viz.plot_curves(log, tmp_path / "curves.png")
    width, height = _assert_png(out)
    # two panels (loss: train + val, miou: val); lr is not plotted -> one row of two 4x3-inch panels at
    # 100 dpi
    assert (width, height) == (800, 300)


def test_plot_curves_reports_bad_lines(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 0, "split": "train", "loss": 1.0}\n{not json}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not valid JSON"):
        viz.plot_curves(log, tmp_path / "c.png")
    log.write_text('{"step": 0, "split": "train", "lr": 1.0}\n')
    with pytest.raises(ValueError, match="nothing|no train loss"):
        viz.plot_curves(log, tmp_path / "c.png")


def test_save_histogram_writes_a_png(tmp_path):
    values = np.concatenate([np.random.default_rng(1).normal(size=200), [np.nan]])
    out = viz.save_histogram(values, tmp_path / "hist.png", "episode accuracy", "accuracy")
    assert _assert_png(out) == (500, 350)
    with pytest.raises(ValueError, match="no finite values"):
        viz.save_histogram([np.nan], tmp_path / "empty.png", "t", "x")


def test_plot_bias_changes_writes_a_png(tmp_path):
    changes = {"bitfit": [0.01, 0.02, 0.015, 0.03], "relbitfit": [0.02, 0.01, 0.005]}
    out = viz.plot_bias_changes(changes, tmp_path / "bias.png", "bias changes per layer")
    assert _assert_png(out) == (600, 350)
    with pytest.raises(ValueError):
        viz.plot_bias_changes({}, tmp_path / "none.png", "t")


def test_viz_leaves_the_global_backend_alone(tmp_path):
    # viz draws on explicit Agg canvases; it must not call matplotlib.use() behind the user's back
    # (dict.__getitem__ reads the raw setting without triggering matplotlib's backend auto-resolution)
    before = dict.__getitem__(matplotlib.rcParams, "backend")
    importlib.reload(viz)
    viz.save_histogram([0.0, 1.0], tmp_path / "h.png", "t", "x")
    assert dict.__getitem__(matplotlib.rcParams, "backend") == before
