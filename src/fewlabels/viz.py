"""Plots and mask overlays for reports.

Figures are built as :class:`matplotlib.figure.Figure` objects attached to an explicit Agg canvas rather than
through ``pyplot``: nothing here selects a global backend or keeps figures alive in pyplot's registry, so
importing this module neither changes the user's interactive backend nor leaks memory in long training
runs, and it works on headless machines.

Colours follow the Pascal VOC colour map (class 0 black, 1 dark red, 2 dark green, ...); the ignore index
(255) is drawn white.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "IGNORE_COLOR",
    "colorize",
    "overlay",
    "palette",
    "plot_bias_changes",
    "plot_curves",
    "save_histogram",
    "save_image_grid",
]

IGNORE_COLOR = np.array([255, 255, 255], dtype=np.uint8)
"""RGB colour of ignored pixels (target value 255)."""


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas; savefig then renders with Agg
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------


def palette(num_classes: int) -> np.ndarray:
    """Pascal VOC colour map.

    For class ``i`` with bits ``i = sum_j b_j 2^j`` channels take the bits in turn, most significant first:
    ``R = sum_{s=0}^{7} b_{3s} 2^{7-s}``, ``G = sum_s b_{3s+1} 2^{7-s}``, ``B = sum_s b_{3s+2} 2^{7-s}``.
    Row 255 (present when ``num_classes > 255``) is the ignore colour, white, as in the masks this library
    writes.

    Args:
        num_classes: number of rows ``N`` (>= 1).

    Returns:
        ``[N, 3]`` uint8 array.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    ids = np.arange(num_classes, dtype=np.int64)
    colours = np.zeros((num_classes, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    if num_classes > 255:
        colours[255] = IGNORE_COLOR
    return colours.astype(np.uint8)


def _lookup_table(mask: np.ndarray, num_classes: int, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``mask`` and return (integer mask, colour table indexed by mask value)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != np.bool_:
        raise ValueError(f"mask must hold integer class indices, got dtype {mask.dtype}")
    m = mask.astype(np.int64)
    valid = ((m >= 0) & (m < num_classes)) | (m == ignore_index)
    if not valid.all():
        bad = np.unique(m[~valid])[:10].tolist()
        raise ValueError(
            f"mask holds values {bad} outside [0, {num_classes}) that are not the ignore index {ignore_index}"
        )
    size = max(num_classes, ignore_index + 1 if ignore_index >= 0 else 0, 1)
    table = np.zeros((size, 3), dtype=np.uint8)
    table[:num_classes] = palette(num_classes)
    if ignore_index >= 0:
        table[ignore_index] = IGNORE_COLOR
    return m, table


def colorize(mask: np.ndarray | torch.Tensor, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Colour a label mask with :func:`palette`: ``out[y, x] = palette[mask[y, x]]``, ignore pixels white.

    Args:
        mask: ``[H, W]`` integer class indices in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: number of classes.
        ignore_index: value drawn white.

    Returns:
        ``[H, W, 3]`` uint8 RGB image.
    """
    m, table = _lookup_table(_to_numpy(mask), num_classes, ignore_index)
    return table[m]


def overlay(
    image_uint8: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    num_classes: int,
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> np.ndarray:
    """Blend a coloured mask over an image: ``out = round((1 - alpha) image + alpha colorize(mask))``.

    Ignored pixels keep the image unblended, so unlabeled boundaries do not hide the picture.

    Args:
        image_uint8: ``[H, W, 3]`` (or ``[H, W, 4]``, alpha dropped, or ``[H, W]`` grey) uint8 image.
        mask: ``[H, W]`` integer class indices.
        num_classes: number of classes.
        alpha: mask opacity in ``[0, 1]``.
        ignore_index: mask value left unblended.

    Returns:
        ``[H, W, 3]`` uint8 image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    image = _to_numpy(image_uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be [H, W, 3], [H, W, 4] or [H, W], got shape {image.shape}")
    image = image[:, :, :3]
    m = _to_numpy(mask)
    if m.shape != image.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image size {image.shape[:2]}")
    colours = colorize(m, num_classes, ignore_index).astype(np.float64)
    blended = np.rint((1.0 - alpha) * image.astype(np.float64) + alpha * colours).astype(np.uint8)
    ignored = m == ignore_index
    blended[ignored] = image[ignored]
    return blended


def save_image_grid(
    path: str | Path, rows: Sequence[Sequence[np.ndarray | torch.Tensor]], column_titles: Sequence[str]
) -> Path:
    """Save a grid of images (e.g. image / ground truth / prediction per row) as one PNG.

    Args:
        path: output ``.png`` path (parent folders are created).
        rows: ``R`` rows of ``C`` cells; each cell an ``[H, W, 3]`` uint8 RGB image (images, or masks already
            coloured with :func:`colorize`) or an ``[H, W]`` array shown in grey.
        column_titles: ``C`` titles written above the first row (may be empty for no titles).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if len(rows) == 0 or any(len(row) == 0 for row in rows):
        raise ValueError("save_image_grid needs at least one row and every row needs at least one image")
    ncols = max(len(row) for row in rows)
    if column_titles and len(column_titles) != ncols:
        raise ValueError(f"got {len(column_titles)} column titles for rows of {ncols} images")
    nrows = len(rows)
    fig = _new_figure(2.2 * ncols, 2.2 * nrows + (0.3 if column_titles else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(row):
                continue
            img = _to_numpy(row[c])
            if img.ndim == 2:
                ax.imshow(img, cmap="gray", interpolation="nearest")
            elif img.ndim == 3 and img.shape[2] in (3, 4):
                ax.imshow(img, interpolation="nearest")
            else:
                raise ValueError(f"cell ({r}, {c}) must be [H, W, 3] or [H, W], got shape {img.shape}")
            if r == 0 and column_titles:
                ax.set_title(column_titles[c], fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Curves and distributions
# --------------------------------------------------------------------------------------------------


def _read_metric_records(metrics_jsonl: Path) -> list[dict[str, Any]]:
    records = []
    with open(metrics_jsonl, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{metrics_jsonl}:{lineno} is not valid JSON ({err.msg})") from err
            if not isinstance(record, dict) or "step" not in record or "split" not in record:
                raise ValueError(f"{metrics_jsonl}:{lineno} must be a JSON object with 'step' and 'split' keys")
            records.append(record)
    return records


def plot_curves(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    """Plot training curves from a ``metrics.jsonl`` log.

    Each line is a JSON object ``{"step": int, "split": "train" | "val" | ..., "<metric>": number, ...}``. One
    subplot per metric name; the train split contributes its loss terms (keys containing ``"loss"``; learning rate,
    throughput and the like are left out), every other split contributes all its numeric keys; each (split, metric) is
    one line against ``step``.

    Args:
        metrics_jsonl: path of the log.
        out_png: output ``.png`` path (parent folders are created).

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for a malformed line (its number is given) or a log with nothing to plot.
    """
    records = _read_metric_records(Path(metrics_jsonl))
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for record in records:
        split = str(record["split"])
        for key, value in record.items():
            if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if split == "train" and "loss" not in key:
                continue
            series.setdefault(key, {}).setdefault(split, []).append((float(record["step"]), float(value)))
    if not series:
        raise ValueError(f"{metrics_jsonl} holds no train loss or evaluation metric to plot")

    names = sorted(series, key=lambda name: (0 if name == "loss" else 1, name))
    # one colour per split across all panels, so "val" is the same colour in every subplot
    splits = sorted({split for per_split in series.values() for split in per_split})
    colour_of = {split: f"C{index % 10}" for index, split in enumerate(splits)}
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _new_figure(4.0 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for index, name in enumerate(names):
        ax = axes[index // ncols][index % ncols]
        for split, points in sorted(series[name].items()):
            points.sort()
            steps, values = zip(*points)
            ax.plot(
                steps,
                values,
                color=colour_of[split],
                marker="o" if len(points) < 30 else None,
                markersize=3,
                label=split,
            )
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for index in range(len(names), nrows * ncols):
        axes[index // ncols][index % ncols].set_axis_off()
    fig.tight_layout()
    return _save(fig, out_png)


def save_histogram(
    values: np.ndarray | torch.Tensor | Sequence[float], path: str | Path, title: str, xlabel: str
) -> Path:
    """Save a histogram of ``values`` (any shape, flattened; NaN/inf dropped) as a PNG.

    Args:
        values: the samples.
        path: output ``.png`` path (parent folders are created).
        title: figure title.
        xlabel: x-axis label.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    x = _to_numpy(values if isinstance(values, torch.Tensor) else np.asarray(values)).astype(np.float64)
    x = x.reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError(f"save_histogram({title!r}) got no finite values")
    fig = _new_figure(5.0, 3.5)
    ax = fig.subplots()
    ax.hist(x, bins=min(50, max(1, int(np.sqrt(x.size)))), color="#4c72b0", edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path)


def plot_bias_changes(changes: Mapping[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """Plot per-layer bias changes, one line per method (the RelBitFit vs BitFit figure).

    Args:
        changes: ``{method: [d_0, ..., d_{L-1}]}`` with ``d_l = mean |b_after - b_before|`` over layer ``l``'s
            biases; methods may have different numbers of layers.
        path: output ``.png`` path (parent folders are created).
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not changes or all(len(v) == 0 for v in changes.values()):
        raise ValueError("plot_bias_changes needs at least one method with at least one layer")
    fig = _new_figure(6.0, 3.5)
    ax = fig.subplots()
    for method, per_layer in changes.items():
        y = np.asarray(per_layer, dtype=np.float64)
        ax.plot(np.arange(y.size), y, marker="o", markersize=3, label=method)
    ax.set_title(title)
    ax.set_xlabel("layer index")
    ax.set_ylabel("mean |b_after - b_before|")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
