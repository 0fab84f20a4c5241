"""``scenes``: the embedded semantic-segmentation benchmark (an offline stand-in for Pascal VOC / Cityscapes).

Every image is a composition of real photographic textures shipped with scikit-image, with a pixel-exact mask:

- three *stuff* classes fill the canvas: ``grass`` (``skimage.data.grass()``), ``gravel`` (``gravel()``) and
  ``brick`` (``brick()``). The canvas is cut into 2 or 3 regions by random wavy lines (parallel bands, or one
  line with a second one splitting one side), and each region shows a random crop of a distinct stuff texture;
- then 1-3 *thing* objects are pasted on top, later ones occluding earlier ones: ``disc`` (ellipses filled
  with the stained tissue of ``immunohistochemistry()``), ``triangle`` (filled with the printed text of
  ``page()``) and ``letter`` (silhouettes of DejaVu Sans Bold capitals, filled with the galaxies of
  ``hubble_deep_field()``).

Grayscale textures are tinted with a per-class colour blended at 35%, and every region and object gets a
random brightness gain in [0.75, 1.25]: colour helps but does not decide, so a model has to use texture and
shape too. Textures are resampled so that one image spans the same physical extent at any ``size`` (``size / 192`` of
the 512-pixel originals).

Class indices: 0 grass, 1 gravel, 2 brick (stuff), 3 disc, 4 triangle, 5 letter (things). Code that needs a
single background class (e.g. an objects-vs-background view of CCT's weak labels) uses ``background_index = 0``, the
first stuff class. The masks never contain the ignore index 255; it only appears in padding added by augmentation.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fewlabels.data.base import DataError, FewDataset, to_chw_float
from fewlabels.data.cache import cached_arrays
from fewlabels.data.common import CheckReport
from fewlabels.data.glyphs import dejavu_faces, render_glyph
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.segmentation import SegmentationData, SegmentationOptions, Transform, labeled_unlabeled_subsets
from fewlabels.data.unsupervised import CroppedDataset, UnsupervisedData, UnsupervisedOptions

__all__ = [
    "SCENES",
    "SCENE_BACKGROUND_INDEX",
    "SCENE_CLASSES",
    "SCENE_THING_CLASSES",
    "ScenesDataset",
    "build_generated_segmentation",
    "build_generated_unsupervised",
    "generate_scenes",
]

#: Class names, indexed by mask value.
SCENE_CLASSES: tuple[str, ...] = ("grass", "gravel", "brick", "disc", "triangle", "letter")
#: Indices of the thing (object) classes; the others are stuff.
SCENE_THING_CLASSES: tuple[int, ...] = (3, 4, 5)
#: The class used when one background class is needed: the first stuff class.
SCENE_BACKGROUND_INDEX = 0

_GENERATOR_VERSION = 2  # bump whenever the output for given (n, size, seed) changes
_STUFF = (0, 1, 2)
_TINT_STRENGTH = 0.35
# RGB tints (scaled to unit mean so brightness is kept). Stuff: green, warm grey, red; triangles: blue.
_TINTS = {
    0: (0.8, 1.35, 0.85),
    1: (1.1, 1.0, 0.9),
    2: (1.35, 0.85, 0.8),
    4: (0.75, 0.95, 1.3),
}
_SPAN = 192  # texture pixels (of the 512-pixel originals) covered by one image side
_MAX_THINGS = 3
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # capitals whose silhouettes are not discs or triangles (no O, Q, I)
_CHUNK = 256


def _texture_sources() -> dict[int, np.ndarray]:
    """Raw texture of each class (uint8, HxW grayscale or HxWx3 RGB), all bundled with scikit-image."""
    from skimage import data

    return {
        0: data.grass(),
        1: data.gravel(),
        2: data.brick(),
        3: data.immunohistochemistry(),
        4: data.page(),
        5: data.hubble_deep_field(),
    }


def _tint(gray: np.ndarray, colour: Sequence[float]) -> np.ndarray:
    c = np.asarray(colour, np.float32)
    c = c / c.mean()
    gain = (1.0 - _TINT_STRENGTH) + _TINT_STRENGTH * c
    return np.clip(gray[:, :, None].astype(np.float32) * gain, 0, 255).astype(np.uint8)


@lru_cache(maxsize=4)
def _textures(size: int) -> tuple[np.ndarray, ...]:
    """RGB uint8 texture of each class, resampled for images of side ``size`` and at least 2*size wide."""
    out = []
    for cls, raw in sorted(_texture_sources().items()):
        if raw.ndim == 2:
            rgb = _tint(raw, _TINTS[cls])
        else:
            rgb = raw[:, :, :3]
        scale = max(size / _SPAN, (2 * size + 1) / min(rgb.shape[:2]))
        h, w = (max(1, round(s * scale)) for s in rgb.shape[:2])
        out.append(np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.LANCZOS)))
    return tuple(out)


def _region_maps(u: np.ndarray, size: int) -> np.ndarray:
    """Region index (0..2) of each pixel of a chunk of images, from per-image uniform draws ``u [n, 10]``."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = coords[None, :, None], coords[None, None, :]

    def wavy(col: int) -> np.ndarray:
        # A line through the canvas at angle theta, offset c, bent by a sine of amplitude a and frequency f.
        theta = u[:, col, None, None] * np.pi
        a = 0.12 * u[:, col + 1, None, None]
        f = 2 * np.pi * (0.5 + 1.5 * u[:, col + 2, None, None])
        phase = 2 * np.pi * u[:, col + 3, None, None]
        along = -xx * np.sin(theta) + yy * np.cos(theta)
        return xx * np.cos(theta) + yy * np.sin(theta) + a * np.sin(f * along + phase)

    t1, t2 = wavy(0), wavy(4)
    offset = (0.3 * u[:, 8] - 0.15)[:, None, None]
    mode = np.floor(u[:, 9] * 3).astype(np.int64)[:, None, None]  # 0: two regions, 1: bands, 2: junction
    two = (t1 > offset).astype(np.int8)
    bands = (t1 > offset - 0.15).astype(np.int8) + (t1 > offset + 0.15).astype(np.int8)
    junction = np.where(t1 > offset, 1 + (t2 > 0), 0).astype(np.int8)
    return np.where(mode == 0, two, np.where(mode == 1, bands, junction))


def _shape_mask(cls: int, side: int, p: np.ndarray, letter_face: str) -> np.ndarray:
    """Boolean ``side x side`` silhouette of a thing of class ``cls`` from uniform draws ``p``."""
    coords = np.arange(side, dtype=np.float32) + 0.5 - side / 2
    yy, xx = coords[:, None], coords[None, :]
    r = side / 2
    if cls == 3:  # ellipse with axis ratio 0.6-1 and random orientation
        angle = p[0] * np.pi
        ca, sa = math.cos(angle), math.sin(angle)
        u, v = xx * ca + yy * sa, -xx * sa + yy * ca
        return (u / r) ** 2 + (v / (r * (0.6 + 0.4 * p[1]))) ** 2 <= 1.0
    if cls == 4:  # triangle: three vertices at jittered thirds of a turn around the centre
        angles = 2 * np.pi * p[0] + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + 0.5 * (p[1:4] - 0.5)
        vx, vy = r * np.cos(angles), r * np.sin(angles)
        inside = np.ones((side, side), bool)
        for k in range(3):
            x0, y0, x1, y1 = vx[k], vy[k], vx[(k + 1) % 3], vy[(k + 1) % 3]
            inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
        return inside
    letter = _LETTERS[min(int(p[0] * len(_LETTERS)), len(_LETTERS) - 1)]
    silhouette = _letter_silhouette(letter, side, letter_face)
    return silhouette[:, ::-1] if p[1] < 0.5 else silhouette


@lru_cache(maxsize=4096)
def _letter_silhouette(letter: str, side: int, face: str) -> np.ndarray:
    silhouette = render_glyph(letter, side, face, centred=True) >= 128
    silhouette.setflags(write=False)
    return silhouette


def _paste(dest: np.ndarray, dest_mask: np.ndarray, shape: np.ndarray, cy: int, cx: int, crop: np.ndarray) -> int:
    """Paste ``crop`` through ``shape`` centred at (cy, cx), clipped to the canvas; returns pixels written."""
    size, side = dest.shape[0], shape.shape[0]
    top, left = cy - side // 2, cx - side // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, size), min(left + side, dest.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    sel = shape[y0 - top : y1 - top, x0 - left : x1 - left]
    np.copyto(dest[y0:y1, x0:x1], crop[y0 - top : y1 - top, x0 - left : x1 - left], where=sel[:, :, None])
    dest_mask[y0:y1, x0:x1][sel] = 1
    return int(sel.sum())


def _render_chunk(draws: dict[str, np.ndarray], size: int, things: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks of a chunk of scenes from their draws (``things=False``: the stuff layer only)."""
    textures = _textures(size)
    letter_face = str(dejavu_faces()[0])
    n = draws["regions"].shape[0]
    region = _region_maps(draws["regions"], size)  # [n, H, W]
    stuff_of_region = np.argsort(draws["stuff_order"], axis=1)  # a random permutation of the 3 stuff classes
    masks = np.take_along_axis(stuff_of_region, region.reshape(n, -1).astype(np.int64), axis=1)
    masks = masks.reshape(n, size, size).astype(np.uint8)
    # Each stuff class fills exactly one region, so a per-class brightness gain is a per-region gain. Gains
    # are in 1/128 fixed point: integer multiply-adds blend several times faster than masked copies.
    gain = np.round(128 * (0.75 + 0.5 * draws["stuff_gain"])).astype(np.uint16)  # [n, 3]
    acc = np.zeros((n, size, size, 3), np.uint16)
    for cls in _STUFF:
        tex = textures[cls]
        windows = np.lib.stride_tricks.sliding_window_view(tex, (size, size), axis=(0, 1))  # [y, x, 3, H, W]
        oy = (draws["stuff_offset"][:, cls, 0] * (tex.shape[0] - size + 1)).astype(np.int64)
        ox = (draws["stuff_offset"][:, cls, 1] * (tex.shape[1] - size + 1)).astype(np.int64)
        crops = windows[oy, ox].transpose(0, 2, 3, 1)  # one random crop per image, [n, H, W, 3]
        weight = (masks == cls).astype(np.uint16) * gain[:, cls, None, None]
        acc += crops * weight[..., None]
    images = np.minimum(acc >> 7, 255).astype(np.uint8)

    if not things:
        return images, masks
    for i in range(n):
        count = 1 + int(draws["thing_count"][i] * _MAX_THINGS)
        for j in range(min(count, _MAX_THINGS)):
            p = draws["things"][i, j]  # 11 uniform draws per object
            cls = SCENE_THING_CLASSES[min(int(p[0] * 3), 2)]
            side = max(4, int(round(size * (0.32 + 0.26 * p[1]))))
            cy = int(size * (0.1 + 0.8 * p[2]))
            cx = int(size * (0.1 + 0.8 * p[3]))
            tex = textures[cls]
            oy = int(p[4] * (tex.shape[0] - side + 1))
            ox = int(p[5] * (tex.shape[1] - side + 1))
            crop = np.clip(tex[oy : oy + side, ox : ox + side] * (0.75 + 0.5 * p[6]), 0, 255).astype(np.uint8)
            shape = _shape_mask(cls, side, p[7:], letter_face)
            hit = np.zeros((size, size), np.uint8)
            if _paste(images[i], hit, shape, cy, cx, crop):
                masks[i][hit.astype(bool)] = cls
    return images, masks


_DRAW_COLUMNS = {  # name -> per-image shape of the uniform draws
    "regions": (10,),
    "stuff_order": (3,),
    "stuff_gain": (3,),
    "stuff_offset": (3, 2),
    "thing_count": (),
    "things": (_MAX_THINGS, 11),
}


def _draw_parameters(n: int, seed: int) -> dict[str, np.ndarray]:
    """All random numbers of a dataset, drawn up front (so chunking does not matter) as one row per image (so
    the first ``m`` scenes do not depend on ``n``)."""
    widths = [math.prod(shape) for shape in _DRAW_COLUMNS.values()]
    table = np.random.default_rng([seed, 0x5CE4E5]).random((n, sum(widths)), dtype=np.float32)
    out, start = {}, 0
    for (name, shape), width in zip(_DRAW_COLUMNS.items(), widths):
        out[name] = table[:, start : start + width].reshape((n, *shape))
        start += width
    return out


def generate_scenes(n: int, size: int = 96, seed: int = 0) -> dict[str, np.ndarray]:
    """Generate (or read from the cache) ``n`` scenes of side ``size``.

    Returns:
        ``{"images": uint8 [n, size, size, 3], "masks": uint8 [n, size, size]}`` with mask values in 0..5
        (see :data:`SCENE_CLASSES`); identical for identical ``(n, size, seed)``, and the first ``m`` images
        of a larger ``n`` equal those of ``n = m``.
    """
    if int(n) <= 0:
        raise DataError(f"n must be a positive number of scenes, got {n}")
    if int(size) < 16:
        raise DataError(f"size must be at least 16 pixels, got {size}")
    n, size, seed = int(n), int(size), int(seed)
    params = {
        "n": n,
        "size": size,
        "seed": seed,
        "generator": _GENERATOR_VERSION,
        "skimage": importlib.metadata.version("scikit-image"),
        "letter_face": dejavu_faces()[0].name,
    }

    def build() -> dict[str, np.ndarray]:
        draws = _draw_parameters(n, seed)
        images = np.empty((n, size, size, 3), np.uint8)
        masks = np.empty((n, size, size), np.uint8)
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            chunk = {key: value[start:stop] for key, value in draws.items()}
            images[start:stop], masks[start:stop] = _render_chunk(chunk, size)
        return {"images": images, "masks": masks}

    return cached_arrays("scenes", params, build)


_SPLIT_SEEDS = {"train": 0, "val": 1}
_DEFAULT_N = {"train": 2000, "val": 500}


class ScenesDataset(FewDataset):
    """Segmentation dataset over :func:`generate_scenes` (see the module docstring for the classes).

    Args:
        split: ``"train"`` or ``"val"``; they are generated from different seeds (``2 * seed`` and
            ``2 * seed + 1``), so no image is shared.
        n: number of scenes; default 2000 for train and 500 for val.
        size: image side in pixels.
        seed: dataset seed.
        labeled: when False, samples carry no ``"mask"`` (the unlabeled stream of semi-supervised training).
        transform: a joint augmentation ``callable(image, mask or None, rng) -> (image, mask)`` such as
            :class:`fewlabels.data.transforms.SegAugment`, applied only when ``sample`` gets a generator.
        indices: restrict the dataset to these scene indices (e.g. a labeled subset); ``"index"`` in a sample
            is the scene index, not the position in ``indices``.

    Attributes:
        num_classes, class_names, ignore_index (255), thing_classes (indices of object classes), background_index (0,
        the first stuff class), images, masks (the full uint8 arrays).
    """

    ignore_index = 255
    #: The generator's name (in messages), its label space and its background class; a subclass that serves
    #: another generator overrides these and :meth:`generate`.
    NAME = "scenes"
    CLASS_NAMES: tuple[str, ...] = SCENE_CLASSES
    THING_CLASSES: tuple[int, ...] = SCENE_THING_CLASSES
    BACKGROUND_INDEX = SCENE_BACKGROUND_INDEX

    @staticmethod
    def generate(split: str, n: int, size: int, seed: int) -> dict[str, np.ndarray]:
        """``{"images": uint8 [n, size, size, 3], "masks": uint8 [n, size, size]}`` of ``split`` at dataset
        seed ``seed`` (already made split-specific)."""
        return generate_scenes(n, size, seed)

    def __init__(
        self,
        split: str = "train",
        n: int | None = None,
        size: int = 96,
        seed: int = 0,
        labeled: bool = True,
        transform: Callable[..., tuple[np.ndarray, np.ndarray | None]] | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        if split not in _SPLIT_SEEDS:
            raise DataError(f"unknown {self.NAME} split {split!r}; choose one of {sorted(_SPLIT_SEEDS)}")
        n = _DEFAULT_N[split] if n is None else int(n)
        arrays = self.generate(split, n, int(size), 2 * int(seed) + _SPLIT_SEEDS[split])
        self.split = split
        self.size = int(size)
        self.images: np.ndarray = arrays["images"]
        self.masks: np.ndarray = arrays["masks"]
        self.labeled = bool(labeled)
        self.transform = transform
        self.class_names: list[str] = list(self.CLASS_NAMES)
        self.num_classes = len(self.CLASS_NAMES)
        self.thing_classes: list[int] = list(self.THING_CLASSES)
        self.background_index = self.BACKGROUND_INDEX
        if indices is None:
            self.indices = np.arange(n)
        else:
            self.indices = np.asarray([int(i) for i in indices], dtype=np.int64)
            bad = self.indices[(self.indices < 0) | (self.indices >= n)]
            if bad.size:
                raise DataError(f"scene indices out of range 0..{n - 1}: {bad[:5].tolist()}")
            if self.indices.size == 0:
                raise DataError("indices is empty: the dataset would have no samples")

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        """``{"image": float32 [3, H, W] in [0, 1], "mask": int64 [H, W] (labeled only), "index": int}``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        scene = int(self.indices[index])
        image = self.images[scene]
        mask = self.masks[scene] if self.labeled else None
        if self.transform is not None and rng is not None:
            image, mask = self.transform(image, mask, rng)
        out: dict[str, Any] = {"image": to_chw_float(image), "index": scene}
        if self.labeled:
            assert mask is not None
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
        return out


# ----------------------------------------------------------------------------------------------------------
# Registration: the ``scenes`` dataset serves the segmentation and the unsupervised families.


def build_generated_segmentation(
    dataset: type[ScenesDataset],
    metadata: DatasetMetadata,
    options: SegmentationOptions,
    transform: Transform,
    seed: int | None = None,
) -> SegmentationData:
    """A generated dataset (``dataset``: :class:`ScenesDataset` or a subclass) for a segmentation run:
    ``options.labeled`` of ``scenes_train`` training images labeled, the rest unlabeled; ``scenes_val`` validation
    images (generated from another seed); the instance is ``seed`` (default ``options.scenes_seed``)."""
    size, n = options.scenes_size, options.scenes_train
    seed = options.scenes_seed if seed is None else seed
    full = dataset("train", n=n, size=size, seed=seed, transform=transform)
    images = dataset("train", n=n, size=size, seed=seed, labeled=False, transform=transform)
    val = dataset("val", n=options.scenes_val, size=size, seed=seed)
    labeled, unlabeled = labeled_unlabeled_subsets(full, images, options)
    return SegmentationData.from_metadata(labeled, unlabeled, val, metadata)


def build_generated_unsupervised(
    dataset: type[ScenesDataset], metadata: DatasetMetadata, options: UnsupervisedOptions
) -> UnsupervisedData:
    """A generated dataset for an unsupervised run: ``scenes_n`` images of the ``split`` (default train), cropped to
    ``input_size``; evaluation on the ``eval_split`` images, or on the training ones (IIC's IID setting)."""
    n, size, seed = options.scenes_n, options.scenes_size, options.seed
    train = dataset(options.split or "train", n=n, size=size, seed=seed)
    ev = dataset(options.eval_split, n=n, size=size, seed=seed) if options.eval_split else train
    return UnsupervisedData(
        CroppedDataset(train, options.input_size),
        CroppedDataset(ev, options.input_size),
        train.num_classes,
        list(train.class_names),
        metadata.in_channels,
    )


def build_scenes_segmentation(options: SegmentationOptions, transform: Transform) -> SegmentationData:
    """``scenes`` for a segmentation run (:func:`build_generated_segmentation`)."""
    return build_generated_segmentation(ScenesDataset, SCENES.metadata, options, transform)


def build_scenes_unsupervised(options: UnsupervisedOptions) -> UnsupervisedData:
    """``scenes`` for an unsupervised run (:func:`build_generated_unsupervised`)."""
    return build_generated_unsupervised(ScenesDataset, SCENES.metadata, options)


def check_scenes(root: Path, report: CheckReport) -> None:
    """Check that the generator's sources are installed: scikit-image's textures and matplotlib's DejaVu faces."""
    try:
        textures = _texture_sources()
    except (ImportError, OSError, ValueError) as exc:
        report.add_problem(f"scikit-image's sample textures cannot be read ({exc}); reinstall scikit-image")
    else:
        report.counts["textures"] = len(textures)
    report.counts["letter faces"] = len(dejavu_faces())
    report.counts["classes"] = len(SCENE_CLASSES)
    report.counts["thing classes"] = len(SCENE_THING_CLASSES)


SCENES = register_dataset(
    DatasetSpec(
        name="scenes",
        description="embedded: photographic-texture scenes with exact masks, generated offline (no ROOT)",
        check=check_scenes,
        metadata=DatasetMetadata(class_names=SCENE_CLASSES, thing_classes=SCENE_THING_CLASSES),
        segmentation=build_scenes_segmentation,
        unsupervised=build_scenes_unsupervised,
        root="none",
    )
)
