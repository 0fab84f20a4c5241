"""Helpers shared by the dataset modules: reading images and masks, listing folders, and the check report.

Reading: :func:`read_rgb` and :func:`read_index_mask` decode a file or raise a :class:`~fewlabels.data.base.DataError`
that names it; :func:`check_mask_values` and :func:`check_same_size` reject masks that do not fit their classes or
their image; :func:`open_csv` and :func:`read_jsonl` read the rows of text files. Listing: :func:`list_images` (a
folder's images by stem), :func:`find_inputs` (the images among the paths given to ``predict``),
:func:`read_class_names`. Writing: :func:`plan_outputs` names the outputs of ``predict``, and :class:`InputFiles`
refuses any output that is, or lies inside, one of the command's inputs.

Checking: every dataset's layout checker fills a :class:`CheckReport` (``fewlabels data check KIND ROOT``);
:func:`check_image_dir`, :func:`check_classes_file`, :func:`report_missing` and :func:`check_sampled_masks` are the
steps most checkers share.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewlabels.data.base import DataError

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "MASK_SAMPLES",
    "SHOWN_PATHS",
    "CheckReport",
    "CheckerFunc",
    "DatasetMetadata",
    "InputFiles",
    "check_classes_file",
    "check_image_dir",
    "check_images_decode",
    "check_mask_extensions",
    "check_mask_values",
    "check_same_size",
    "check_sampled_masks",
    "count_files",
    "find_inputs",
    "list_images",
    "missing_files_error",
    "open_csv",
    "plan_outputs",
    "read_class_names",
    "read_index_mask",
    "read_jsonl",
    "read_rgb",
    "to_rgb8",
    "report_missing",
    "require_files",
]

#: The label of pixels that no loss or metric counts (VOC's object borders, padding added by augmentation).
IGNORE_INDEX = 255

#: File suffixes read as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: How many masks a checker decodes to look for out-of-range values (the full check would read every mask).
MASK_SAMPLES = 12

#: How many missing paths a problem message lists before summarising.
SHOWN_PATHS = 5


@dataclass(frozen=True)
class DatasetMetadata:
    """What is known about a dataset's labels before reading it.

    Attributes:
        class_names: the classes in label order; empty when the data defines them (folders, per-split few-shot
            classes, GLUE tasks).
        ignore_index: the mask value that no loss or metric counts; None for datasets without masks.
        thing_classes: the object ("thing") classes, which CCT's object masking cuts out; None means every class
            but 0 (class 0 is the background).
        in_channels: channels of the images (4 for Potsdam's RGB + infrared).
        image_size: the default image side of few-shot datasets (0 = no default).
    """

    class_names: tuple[str, ...] = ()
    ignore_index: int | None = IGNORE_INDEX
    thing_classes: tuple[int, ...] | None = None
    in_channels: int = 3
    image_size: int = 0

    @property
    def num_classes(self) -> int:
        """Number of classes, 0 when the data defines them."""
        return len(self.class_names)

    def things(self, num_classes: int) -> list[int]:
        """The object classes among ``num_classes`` classes."""
        if self.thing_classes is None:
            return list(range(1, num_classes))
        return [c for c in self.thing_classes if c < num_classes]


# ----------------------------------------------------------------------------------------------------------
# Reading files


def to_rgb8(img: Image.Image, path: str | Path) -> np.ndarray:
    """An opened image as an HxWx3 uint8 array, whatever its mode.

    Palette, grayscale, RGBA/LA (alpha dropped), CMYK and 1-bit images go through Pillow's RGB conversion. 16- and
    32-bit integer images (``I;16`` PNGs, ``I``) are scaled to 0..255 from their full range (65535 for 16-bit data),
    never clipped: Pillow's own conversion turns them white or black. Floating-point images are refused by path.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if arr.ndim != 2:
            raise DataError(f"cannot read image {path}: unsupported {mode} image of shape {arr.shape}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise DataError(
                f"cannot read image {path}: 32-bit values outside 0..65535; save it as an 8- or 16-bit image"
            )
        scaled = (arr.astype(np.float64) * (255.0 / 65535.0)).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(scaled[:, :, None], 3, axis=2))
    if mode == "F":
        raise DataError(
            f"cannot read image {path}: a floating-point ({mode}) image has no fixed range; save it as an 8- or "
            "16-bit image"
        )
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file into an HxWx3 uint8 array (DataError with the path if it fails to decode).

    Any mode is read correctly (see :func:`to_rgb8`): a 16-bit PNG is scaled from 0..65535, not clipped.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb8(img, path)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}. Re-export or remove this file.") from exc


def read_index_mask(path: str | Path) -> np.ndarray:
    """Decode a class-index mask (palette, grey or 16-bit PNG) into an HxW integer array.

    Palette PNGs (VOC ``SegmentationClass``) are read as their palette indices, never as RGB colours. A colour
    (RGB) mask is accepted only when its three channels are equal; otherwise it is a DataError, because colours
    cannot be turned into class indices without a palette.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGB", "RGBA", "LA"):
                arr = np.asarray(img.convert("RGB" if mode != "LA" else "L"))
            else:
                arr = np.asarray(img)
    except FileNotFoundError as exc:
        raise DataError(f"mask not found: {path}") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode mask {path}: {exc}. Re-export or remove this file.") from exc
    if arr.ndim == 3:
        # A colour mask is usable only when it is grey (three equal channels): colours are not class indices.
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DataError(
                f"mask {path} is a colour ({mode}) image; masks must hold one class index per pixel "
                "(palette or greyscale PNG)."
            )
        arr = np.ascontiguousarray(arr[..., 0])
    if arr.ndim != 2:
        raise DataError(f"mask {path} has shape {arr.shape}; expected a single-channel HxW index image.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        raise DataError(f"mask {path} holds floating-point values; masks must hold integer class indices.")
    return arr


def check_mask_values(mask: np.ndarray, num_classes: int, path: str | Path, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise a DataError naming ``path`` and the offending values when ``mask`` holds values outside
    ``[0, num_classes)`` other than ``ignore_index``."""
    if mask.size == 0:
        return
    if int(mask.max()) < num_classes and int(mask.min()) >= 0:
        return
    values = np.unique(mask)
    bad = [int(v) for v in values if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise DataError(
            f"mask {path} has values outside 0..{num_classes - 1} (and {ignore_index} = ignore): {shown}. "
            "Fix the mask, or declare more classes."
        )


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: str, mask_path: str) -> None:
    """Raise a DataError naming both files when an image and its mask differ in size."""
    if image.shape[:2] != mask.shape[:2]:
        ih, iw = image.shape[:2]
        mh, mw = mask.shape[:2]
        raise DataError(
            f"image and mask sizes differ: image {image_path} is {iw}x{ih} (WxH) but mask {mask_path} is "
            f"{mw}x{mh}. A mask must have exactly the size of its image."
        )


@contextmanager
def open_csv(path: Path) -> Iterator[csv.DictReader[str]]:
    """A reader of the rows of a CSV file (``.tsv``: tab-separated) by its header line's names; a byte-order mark
    before the header is dropped."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        yield csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The objects of a JSONL file with their 1-based line numbers (blank lines skipped); a line that is not valid
    JSON, or not an object, is a DataError naming the file and the line."""
    with path.open(encoding="utf-8") as fh:
        for line, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {line}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {line}: expected a JSON object per line")
            yield line, record


# ----------------------------------------------------------------------------------------------------------
# Listing files


def list_images(folder: Path) -> dict[str, Path]:
    """Image files directly inside ``folder`` by stem (hidden files skipped); two images with the same stem are a
    DataError, since their masks could not be told apart."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in found:
            raise DataError(f"two images share the name {path.stem!r}: {found[path.stem]} and {path}; rename one")
        found[path.stem] = path
    return found


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a ``classes.txt`` file, one per non-empty line."""
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def find_inputs(inputs: Sequence[Path], suffixes: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """The files among ``inputs`` whose suffix is one of ``suffixes``; folders are searched recursively.

    A named file is taken whatever its suffix; a path that does not exist, or finding no file at all, is a
    DataError.
    """
    wanted = {s.lower() for s in suffixes}
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in wanted))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input not found: {p}")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))} (looked for {sorted(wanted)})")
    return files


def plan_outputs(inputs: Sequence[Path], suffixes: Sequence[str] = IMAGE_EXTENSIONS) -> list[tuple[Path, Path]]:
    """Each file :func:`find_inputs` finds, with the relative path (without suffix) of its outputs under ``--out``.

    A folder's files keep their place in its tree (``a/x.png`` -> ``a/x``); a named file goes to the top. Files
    that would share an output name (``x.png`` and ``x.jpg`` in one folder, two inputs with the same name) get their
    extension in it (``x_png``, ``x_jpg``), then a number if needed, so no prediction overwrites another.
    """
    planned: list[tuple[Path, Path]] = []
    for p in map(Path, inputs):
        if p.is_dir():
            planned += [(f, f.relative_to(p).with_suffix("")) for f in find_inputs([p], suffixes)]
        else:
            planned += [(f, Path(f.stem)) for f in find_inputs([p], suffixes)]
    groups: dict[str, int] = {}
    for _, rel in planned:
        groups[rel.as_posix().lower()] = groups.get(rel.as_posix().lower(), 0) + 1
    out: list[tuple[Path, Path]] = []
    taken: set[str] = set()
    for f, rel in planned:
        if groups[rel.as_posix().lower()] > 1 and f.suffix:
            rel = rel.with_name(f"{rel.name}_{f.suffix[1:]}")
        base, n = rel, 2
        while rel.as_posix().lower() in taken:
            rel, n = base.with_name(f"{base.name}-{n}"), n + 1
        taken.add(rel.as_posix().lower())
        out.append((f, rel))
    return out


class InputFiles:
    """The files and folders a command reads, so that none of its outputs changes them.

    :meth:`overwritten_by` finds the input file that writing an output would overwrite: the same path once resolved
    (symlinks, ``..``, relative paths) or the same file on disk (a hard link, or a symlink to one). :meth:`folder_of`
    finds the input folder an output would lie in. Outputs are checked before anything is written.
    """

    def __init__(self, files: Iterable[str | Path], folders: Iterable[str | Path] = ()) -> None:
        self.paths: dict[Path, Path] = {}
        self.inodes: dict[tuple[int, int], Path] = {}
        for f in map(Path, files):
            self.paths.setdefault(f.resolve(), Path(os.path.abspath(f)))
            try:
                st = f.stat()
            except OSError:  # not there (yet): no file on disk to share
                continue
            self.inodes.setdefault((st.st_dev, st.st_ino), Path(os.path.abspath(f)))
        self.folders = {Path(d).resolve(): Path(os.path.abspath(d)) for d in folders}

    def overwritten_by(self, target: Path) -> Path | None:
        """The input file (its absolute path as given) that writing ``target`` would overwrite, or None."""
        found = self.paths.get(target.resolve())
        if found is not None:
            return found
        try:
            st = target.stat()
        except OSError:  # a new file (or a dangling link, which writes a new file too)
            return None
        return self.inodes.get((st.st_dev, st.st_ino))

    def folder_of(self, target: Path) -> Path | None:
        """The input folder (its absolute path as given) that ``target`` would be written into, at any depth, or
        None."""
        resolved = target.resolve()
        for folder in (resolved, *resolved.parents):
            if folder in self.folders:
                return self.folders[folder]
        return None


def missing_files_error(what: str, paths: Sequence[str], layout: str, total: int) -> DataError:
    """A DataError saying how many of ``total`` ``what`` are missing, with a few of their paths and the layout."""
    shown = "\n".join(f"  {p}" for p in paths[:SHOWN_PATHS])
    more = f"\n  ... and {len(paths) - SHOWN_PATHS} more" if len(paths) > SHOWN_PATHS else ""
    return DataError(f"{len(paths)} of {total} {what} not found, e.g.:\n{shown}{more}\nExpected layout:\n{layout}")


def require_files(paths: Sequence[str], what: str, layout: str) -> None:
    """Raise :func:`missing_files_error` when some of ``paths`` are not files."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise missing_files_error(what, missing, layout, len(paths))


# ----------------------------------------------------------------------------------------------------------
# Checking a layout


@dataclass
class CheckReport:
    """Outcome of checking one dataset: counts of what was found and a list of problems (``ok`` iff none)."""

    kind: str
    root: str
    ok: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add_problem(self, message: str) -> None:
        """Record a problem; the report is then not ok."""
        self.problems.append(message)
        self.ok = False

    def format(self) -> str:
        """Human-readable summary: a status line, one line per count, then the problems."""
        status = "OK" if self.ok and not self.problems else f"{len(self.problems)} problem(s)"
        lines = [f"{self.kind} dataset at {self.root}: {status}"]
        if self.counts:
            width = max(len(name) for name in self.counts)
            lines += [f"  {name:<{width}}  {value}" for name, value in self.counts.items()]
        if self.problems:
            lines.append("problems:")
            for problem in self.problems:
                first, *rest = problem.splitlines() or [""]
                lines.append(f"  - {first}")
                lines += [f"    {line}" for line in rest]
        return "\n".join(lines)


#: A layout checker: fills the report it is given for the dataset at ``root``. It must not raise for an ordinary
#: layout problem (``report.add_problem``); a DataError or OSError it raises is recorded as one more problem.
CheckerFunc = Callable[[Path, CheckReport], None]


def count_files(folder: Path, pattern: str) -> int:
    """Number of files in ``folder`` matching the glob ``pattern``."""
    return sum(1 for p in folder.glob(pattern) if p.is_file())


def report_missing(report: CheckReport, what: str, paths: Sequence[str | Path], total: int) -> None:
    """Add one problem listing the first missing ``paths`` (nothing when there are none)."""
    if not paths:
        return
    shown = "\n".join(str(p) for p in paths[:SHOWN_PATHS])
    more = f"\n... and {len(paths) - SHOWN_PATHS} more" if len(paths) > SHOWN_PATHS else ""
    report.add_problem(f"{len(paths)} of {total} {what} missing:\n{shown}{more}")


def check_image_dir(report: CheckReport, image_dir: Path, layout: str) -> dict[str, Path] | None:
    """The images directly inside ``image_dir`` by stem (:func:`list_images`), counted as ``images``; a problem when
    the folder is missing (then None, the ``layout`` shown) or holds no image (then an empty mapping)."""
    if not image_dir.is_dir():
        report.add_problem(f"image folder not found: {image_dir}\nExpected layout:\n{layout}")
        return None
    images = list_images(image_dir)
    report.counts["images"] = len(images)
    if not images:
        report.add_problem(f"no images in {image_dir}")
    return images


def check_classes_file(report: CheckReport, root: Path) -> int | None:
    """The number of classes that ``root/classes.txt`` names, counted as ``classes (classes.txt)``; None without the
    file, and None with a problem when it names no class."""
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        return None
    num_classes = len(read_class_names(classes_file))
    report.counts["classes (classes.txt)"] = num_classes
    if num_classes == 0:
        report.add_problem(f"{classes_file} names no class")
        return None
    return num_classes


def check_images_decode(report: CheckReport, paths: Sequence[Path], what: str = "images") -> int:
    """Decode every file of ``paths`` fully (pixels, not just the header), with its progress on stderr
    (:mod:`fewlabels.progress`); add one problem per file that fails (named), and return how many decoded. A 16-bit
    or palette image decodes like any other (:func:`read_rgb`)."""
    from fewlabels.progress import track

    bad: list[str] = []
    for path in track(paths, len(paths), f"decoding {what}", "files"):
        try:
            read_rgb(path)
        except DataError as exc:
            bad.append(str(exc))
    for message in bad:
        report.add_problem(message)
    report.counts[f"{what} decoded"] = len(paths) - len(bad)
    return len(paths) - len(bad)


def check_mask_extensions(report: CheckReport, mask_dir: Path, allowed: Sequence[str] = (".png",)) -> None:
    """Add one problem listing the files in ``mask_dir`` whose extension is not one of ``allowed`` (they are not
    read as masks: a ``.jpg`` mask would be lossy anyway)."""
    wanted = {a.lower() for a in allowed}
    odd = [p for p in sorted(mask_dir.iterdir()) if p.is_file() and not p.name.startswith(".")]
    odd = [p for p in odd if p.suffix.lower() not in wanted]
    if odd:
        shown = "\n".join(str(p) for p in odd[:SHOWN_PATHS])
        more = f"\n... and {len(odd) - SHOWN_PATHS} more" if len(odd) > SHOWN_PATHS else ""
        report.add_problem(
            f"{len(odd)} file(s) in {mask_dir} with an unexpected extension (masks are read only as "
            f"{', '.join(sorted(wanted))}; lossless PNG keeps class indices exact):\n{shown}{more}"
        )


def _evenly_spaced(items: Sequence[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def check_sampled_masks(
    report: CheckReport,
    pairs: Sequence[tuple[Path, Path]],
    num_classes: int | None,
    read: Callable[[Path], Any] | None = None,
) -> set[int]:
    """Decode :data:`MASK_SAMPLES` evenly spaced (image, mask) pairs and report decoding errors, size mismatches
    and out-of-range values; returns the set of mask values seen. ``read`` maps a mask file to class indices
    (default :func:`read_index_mask`)."""
    read = read or read_index_mask
    seen: set[int] = set()
    sampled = _evenly_spaced(pairs, MASK_SAMPLES)
    for image_path, mask_path in sampled:
        try:
            mask = read(mask_path)
            seen.update(int(v) for v in np.unique(mask))
            if num_classes is not None:
                check_mask_values(mask, num_classes, mask_path, IGNORE_INDEX)
            with Image.open(image_path) as img:
                width, height = img.size
            if (height, width) != mask.shape[:2]:
                report.add_problem(
                    f"image and mask sizes differ: {image_path} is {width}x{height}, {mask_path} is "
                    f"{mask.shape[1]}x{mask.shape[0]}"
                )
        except (DataError, OSError) as exc:
            report.add_problem(str(exc))
    report.counts["masks sampled"] = len(sampled)
    return seen
