"""``glyphs``: the embedded few-shot benchmark (an offline stand-in for Omniglot / miniImageNet).

Letters of five scripts are rendered with PIL from the DejaVu TrueType faces that matplotlib ships
(``matplotlib.get_data_path()/fonts/ttf/DejaVu*.ttf``). The faces used are those that contain the Latin
alphabet (12 in matplotlib 3.x: Sans, Serif and Sans Mono, each regular/bold/oblique/bold-oblique; the two
"Display" faces hold only a handful of glyphs and are skipped), and a letter is a class only when every one of
those faces has it.

Classes (letters without diacritics):

- Latin: ``A-Z a-z`` (52);
- Greek: capitals ``Α-Ω`` and small ``α-ω`` including final sigma (49);
- Cyrillic: ``А-я`` (64);
- Armenian: capitals ``Ա-Ֆ`` and small ``ա-ֆ`` (76);
- Georgian: Mkhedruli ``ა-ჺ`` (43).

Many letters share a glyph across scripts (Latin ``A``, Greek ``Α`` and Cyrillic ``А`` are the same outline in
DejaVu). Two classes with identical images would make the task ill-posed and would leak novel classes into the
base set, so a letter is dropped when it renders identically (mean squared difference < 1e-4 at 32 px) to an
already kept letter in at least half of the faces, with scripts taking priority in the order Latin, Greek,
Georgian, Cyrillic, Armenian. With matplotlib 3.11's DejaVu 2.35 this leaves Latin 52, Greek 34, Georgian 43,
Cyrillic 44 and Armenian 74 letters.

Split by script, like Omniglot's background / evaluation alphabets, so that base, validation and novel classes
come from different writing systems:

- ``base``  = Latin + Cyrillic + Armenian (170 classes), for pre-training;
- ``val``   = Georgian (43 classes), for model selection;
- ``novel`` = Greek (34 classes), for few-shot evaluation episodes.

Each image is one face under a small random affine map (rotation +-15 deg, scale 0.85-1.1, shear +-0.2,
translation +-8% of the side), rendered at twice ``image_size`` and box-downsampled: bright ink (255) on a
black background, grayscale replicated to 3 channels. Image ``j`` of a class uses face ``perm[j % n_faces]``
for a random per-class permutation ``perm``, so a class with ``per_class >= n_faces`` shows every face.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, ImageFont

from fewlabels.data.base import DataError, to_chw_float
from fewlabels.data.cache import cached_arrays
from fewlabels.data.common import CheckReport
from fewlabels.data.fewshot import FewShotDataset, FewShotOptions, normalise_split
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

__all__ = [
    "GLYPHS",
    "GLYPH_SPLITS",
    "SCRIPTS",
    "GlyphsDataset",
    "dejavu_faces",
    "generate_glyphs",
    "glyph_classes",
    "load_glyphs",
    "render_glyph",
]

#: Candidate letters of each script, as Unicode code points (filtered by :func:`glyph_classes`).
SCRIPTS: dict[str, tuple[int, ...]] = {
    "latin": (*range(0x41, 0x5B), *range(0x61, 0x7B)),
    "greek": (*(c for c in range(0x391, 0x3AA) if c != 0x3A2), *range(0x3B1, 0x3CA)),
    "cyrillic": tuple(range(0x410, 0x450)),
    "armenian": (*range(0x531, 0x557), *range(0x561, 0x587)),
    "georgian": tuple(range(0x10D0, 0x10FB)),
}

#: Scripts of each split.
GLYPH_SPLITS: dict[str, tuple[str, ...]] = {
    "base": ("latin", "cyrillic", "armenian"),
    "val": ("georgian",),
    "novel": ("greek",),
}

# Homoglyphs are removed from the later script in this order (novel and val keep theirs over base).
_DEDUP_PRIORITY = ("latin", "greek", "georgian", "cyrillic", "armenian")
_SCRIPT_NAMES = tuple(SCRIPTS)
_GENERATOR_VERSION = 2  # bump whenever the output for given arguments changes
_SPLIT_CODES = {"base": 0, "val": 1, "novel": 2}
_DEDUP_SIZE = 32
_IDENTICAL = 1e-4  # mean squared difference below which two renders count as identical
_FONT_SCALE = 0.58  # font size as a fraction of the canvas: ascenders and descenders fit with affine slack
_BASELINE = 0.70  # baseline height as a fraction of the canvas
_GLYPH_CENTRE = 0.55  # vertical centre of the letters' body, the pivot of the affine map


def _font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=1)
def dejavu_faces() -> tuple[Path, ...]:
    """The DejaVu faces used for rendering: those holding the whole Latin alphabet, sorted by file name.

    Raises:
        DataError: when matplotlib's font folder holds no usable DejaVu face.
    """
    from matplotlib.ft2font import FT2Font

    faces = []
    for path in sorted(_font_dir().glob("DejaVu*.ttf")):
        font = FT2Font(str(path))
        if all(font.get_char_index(c) != 0 for c in SCRIPTS["latin"]):
            faces.append(path)
    if not faces:
        raise DataError(f"no DejaVu TrueType faces with Latin letters found in {_font_dir()}; reinstall matplotlib")
    return tuple(faces)


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size=size)


def render_glyph(char: str, size: int, face: str | Path | None = None, centred: bool = False) -> np.ndarray:
    """Render one character as a ``size x size`` uint8 image: ink 255 on background 0.

    Args:
        char: a single character.
        size: canvas side in pixels.
        face: a TrueType file; default the first of :func:`dejavu_faces` (DejaVu Sans Bold).
        centred: centre the glyph's ink box on the canvas (silhouettes); otherwise letters sit on a common
            baseline, so case and ascenders/descenders keep their relative size and position.
    """
    if len(char) != 1:
        raise DataError(f"render_glyph expects one character, got {char!r}")
    path = str(face if face is not None else dejavu_faces()[0])
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if centred:
        font = _font(path, max(1, round(0.85 * size)))
        draw.text((size / 2, size / 2), char, fill=255, font=font, anchor="mm")
        ink = np.asarray(canvas)
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        if rows.size:
            dy = (size - 1 - rows[-1] - rows[0]) // 2
            dx = (size - 1 - cols[-1] - cols[0]) // 2
            canvas = canvas.transform(
                canvas.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), Image.Resampling.NEAREST
            )
    else:
        font = _font(path, max(1, round(_FONT_SCALE * size)))
        draw.text((size / 2, _BASELINE * size), char, fill=255, font=font, anchor="ms")
    return np.asarray(canvas)


def _script_letters(faces: Sequence[Path]) -> dict[str, list[int]]:
    from matplotlib.ft2font import FT2Font

    fonts = [FT2Font(str(p)) for p in faces]
    return {
        script: [c for c in points if all(f.get_char_index(c) != 0 for f in fonts)]
        for script, points in SCRIPTS.items()
    }


@lru_cache(maxsize=1)
def _all_classes() -> dict[str, tuple[int, ...]]:
    faces = dejavu_faces()
    letters = _script_letters(faces)
    order = [(script, code) for script in _DEDUP_PRIORITY for code in letters[script]]
    # renders[f, k] = letter k in face f, flattened, in [0, 1]
    renders = np.stack(
        [np.stack([render_glyph(chr(code), _DEDUP_SIZE, face).ravel() for _, code in order]) for face in faces]
    ).astype(np.float32)
    renders /= 255.0
    # Mean squared difference of every pair of letters in every face, from one Gram matrix per face.
    sq = (renders**2).sum(-1)
    gram = renders @ renders.transpose(0, 2, 1)
    msd = (sq[:, :, None] + sq[:, None, :] - 2.0 * gram) / renders.shape[-1]
    identical_faces = (msd < _IDENTICAL).sum(0)
    kept: dict[str, list[int]] = {script: [] for script in SCRIPTS}
    kept_rows: list[int] = []
    for row, (script, code) in enumerate(order):
        if kept_rows and 2 * int(identical_faces[row, kept_rows].max()) >= len(faces):
            continue  # a homoglyph of a letter already kept (e.g. Cyrillic A after Latin A)
        kept[script].append(code)
        kept_rows.append(row)
    return {s: tuple(kept[s]) for s in SCRIPTS}


def glyph_classes(split: str) -> list[str]:
    """The characters that are the classes of ``split`` (base, val or novel), in label order."""
    if split not in GLYPH_SPLITS:
        raise DataError(f"unknown glyphs split {split!r}; choose one of {sorted(GLYPH_SPLITS)}")
    classes = _all_classes()
    return [chr(c) for script in GLYPH_SPLITS[split] for c in classes[script]]


def _script_of(code: int) -> str:
    return next(script for script, points in SCRIPTS.items() if code in points)


def _affine_inverse(params: np.ndarray, side: int) -> tuple[float, ...]:
    """PIL AFFINE coefficients (output -> input) of a rotation/scale/shear/shift about the glyph body."""
    angle, scale, shear, tx, ty = (float(v) for v in params)
    cos, sin = math.cos(angle), math.sin(angle)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
    inverse = np.linalg.inv(forward)
    centre = np.array([side / 2, _GLYPH_CENTRE * side])
    offset = centre - inverse @ (centre + np.array([tx, ty]) * side)
    return (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])


def generate_glyphs(split: str, image_size: int = 32, per_class: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """Build (or read from the cache) the images of one split.

    Returns:
        ``images`` uint8 ``[N, S, S]`` (N = classes x per_class, class-major), ``labels`` int64 ``[N]``,
        ``faces`` int64 ``[N]`` (index into :func:`dejavu_faces`), ``codepoints`` int64 ``[num_classes]`` and
        ``scripts`` int64 ``[num_classes]`` (index into :data:`SCRIPTS`).
    """
    if split not in GLYPH_SPLITS:
        raise DataError(f"unknown glyphs split {split!r}; choose one of {sorted(GLYPH_SPLITS)}")
    if int(image_size) < 8:
        raise DataError(f"image_size must be at least 8 pixels, got {image_size}")
    if int(per_class) < 1:
        raise DataError(f"per_class must be at least 1, got {per_class}")
    image_size, per_class, seed = int(image_size), int(per_class), int(seed)
    faces = dejavu_faces()
    params = {
        "generator": _GENERATOR_VERSION,
        "split": split,
        "image_size": image_size,
        "per_class": per_class,
        "seed": seed,
        "faces": [p.name for p in faces],
        "matplotlib": matplotlib.__version__,
        "pillow": PIL.__version__,
    }

    def build() -> dict[str, np.ndarray]:
        codes = [ord(c) for c in glyph_classes(split)]
        n_faces, n = len(faces), len(codes) * per_class
        rng = np.random.default_rng([seed, _SPLIT_CODES[split]])
        perms = np.stack([rng.permutation(n_faces) for _ in codes])
        face_of = perms[:, np.arange(per_class) % n_faces].ravel()
        affine = np.stack(
            [
                rng.uniform(-np.pi / 12, np.pi / 12, n),  # rotation (radians)
                rng.uniform(0.85, 1.10, n),  # scale
                rng.uniform(-0.2, 0.2, n),  # shear
                rng.uniform(-0.08, 0.08, n),  # x translation (fraction of the side)
                rng.uniform(-0.08, 0.08, n),  # y translation
            ],
            axis=1,
        )
        big = 2 * image_size  # render at 2x, then box-downsample: smooth edges without aliasing
        images = np.empty((n, image_size, image_size), np.uint8)
        for k, code in enumerate(codes):
            masters = {}
            for j in range(per_class):
                i = k * per_class + j
                f = int(face_of[i])
                if f not in masters:
                    masters[f] = Image.fromarray(render_glyph(chr(code), big, faces[f]))
                warped = masters[f].transform(
                    (big, big),
                    Image.Transform.AFFINE,
                    _affine_inverse(affine[i], big),
                    Image.Resampling.BILINEAR,
                )
                images[i] = np.asarray(warped.reduce(2))
        labels = np.repeat(np.arange(len(codes), dtype=np.int64), per_class)
        return {
            "images": images,
            "labels": labels,
            "faces": face_of.astype(np.int64),
            "codepoints": np.asarray(codes, dtype=np.int64),
            "scripts": np.asarray([_SCRIPT_NAMES.index(_script_of(c)) for c in codes], dtype=np.int64),
        }

    return cached_arrays("glyphs", params, build)


class GlyphsDataset(FewShotDataset):
    """Few-shot letter classification over DejaVu-rendered scripts (see the module docstring for the split).

    Args:
        split: ``"base"`` (pre-training), ``"val"`` or ``"novel"`` (evaluation episodes).
        image_size: side of the square images.
        per_class: images per class (one face x one random affine each).
        seed: generation seed; the same arguments always give the same images.
        transform: optional ``callable(image HxWx3 uint8, rng) -> HxWxC uint8``, applied only when ``sample``
            is given a generator (training); evaluation through ``dataset[i]`` is never augmented.

    Attributes:
        labels: int64 array of every sample's label (for episode samplers), class-major.
        num_classes, class_names: the characters of this split, in label order.
        scripts: the script of each class.
        build_seconds: time taken to build (or load) the arrays.
    """

    def __init__(
        self,
        split: str = "base",
        image_size: int = 32,
        per_class: int = 24,
        seed: int = 0,
        transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    ) -> None:
        start = time.perf_counter()
        arrays = generate_glyphs(split, image_size, per_class, seed)
        self.build_seconds = time.perf_counter() - start
        self.split = split
        self.image_size = int(image_size)
        self.per_class = int(per_class)
        self.transform = transform
        self.images: np.ndarray = arrays["images"]
        self.labels: np.ndarray = arrays["labels"].astype(np.int64)
        self.faces: np.ndarray = arrays["faces"]
        self.class_names: list[str] = [chr(int(c)) for c in arrays["codepoints"]]
        self.num_classes = len(self.class_names)
        self.scripts: list[str] = [_SCRIPT_NAMES[int(s)] for s in arrays["scripts"]]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        """``{"image": float32 [3, S, S] in [0, 1], "label": int64 scalar tensor, "index": int}``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} glyph images")
        image = np.repeat(self.images[index][:, :, None], 3, axis=2)
        if self.transform is not None and rng is not None:
            image = self.transform(image, rng)
        return {
            "image": to_chw_float(image),
            "label": torch.tensor(int(self.labels[index]), dtype=torch.int64),
            "index": int(index),
        }


# ----------------------------------------------------------------------------------------------------------
# Registration: the ``glyphs`` few-shot dataset.

#: The glyphs split of each few-shot split name.
_GLYPH_SPLIT_OF = {"train": "base", "val": "val", "test": "novel"}


def load_glyphs(options: FewShotOptions, split: str) -> GlyphsDataset:
    """The ``train`` (base scripts), ``val`` or ``test`` (novel script) split, ``per_class`` images per letter."""
    return GlyphsDataset(
        _GLYPH_SPLIT_OF[normalise_split(split)],
        image_size=options.image_size or GLYPHS.metadata.image_size,
        per_class=options.per_class,
        seed=options.seed,
    )


def check_glyphs(root: Path, report: CheckReport) -> None:
    """Check that matplotlib's DejaVu faces are installed and count the letters of each split."""
    report.counts["faces"] = len(dejavu_faces())
    for split, glyph_split in _GLYPH_SPLIT_OF.items():
        report.counts[f"{split} classes"] = len(glyph_classes(glyph_split))


GLYPHS = register_dataset(
    DatasetSpec(
        name="glyphs",
        description="embedded: letters of five scripts rendered from DejaVu faces, split by script (no ROOT)",
        check=check_glyphs,
        metadata=DatasetMetadata(ignore_index=None, image_size=32),
        few_shot=load_glyphs,
        root="none",
    )
)
