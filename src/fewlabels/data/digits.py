"""``digits``: real scanned handwritten digits, bundled with scikit-learn, as an evaluation-only few-shot dataset.

scikit-learn's ``load_digits`` holds the test set of the UCI "Optical Recognition of Handwritten Digits" data: 1,797
digits written by 13 people on NIST forms, scanned, normalised to 32 x 32 bitmaps and reduced to 8 x 8 by
counting the ink pixels of each 4 x 4 block (values 0-16). It ships inside the scikit-learn wheel, so nothing is
downloaded. With ``glyphs`` (rendered fonts) as the pre-training set, it is a cross-domain test of real
handwriting: other symbols, other writers, another acquisition.

There is no training or validation split: the ten digits are all test classes (``test`` / ``novel``), so a 5-way
episode draws its classes from ten. Each image is scaled to ``0..255`` (``value * 255 / 16``, ink bright on a
black background, as in ``glyphs``), replicated to 3 channels and upsampled bilinearly from 8 pixels to the run's
``data.image_size`` (default 32). Use it with a run trained elsewhere::

    fewlabels fewshot-eval RUN_DIR data.dataset=digits
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from fewlabels.data.base import DataError
from fewlabels.data.common import CheckReport
from fewlabels.data.fewshot import ArrayFewShotDataset, FewShotDataset, FewShotOptions, normalise_split
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset

__all__ = ["DIGITS", "DIGITS_MAX", "digits_arrays", "load_digits_fewshot"]

#: The largest raw value of a ``load_digits`` pixel (ink pixels counted in a 4 x 4 block).
DIGITS_MAX = 16


@lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits as ``uint8 [1797, 8, 8]`` in ``0..255`` and their labels ``int64 [1797]`` (0-9)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)
    if raw.ndim != 3 or raw.min() < 0 or raw.max() > DIGITS_MAX:
        raise DataError(f"scikit-learn's load_digits returned unexpected images (shape {raw.shape})")
    images = np.rint(raw * (255.0 / DIGITS_MAX)).astype(np.uint8)
    images.setflags(write=False)
    labels = np.asarray(bunch.target, dtype=np.int64)
    labels.setflags(write=False)
    return images, labels


def load_digits_fewshot(options: FewShotOptions, split: str) -> FewShotDataset:
    """The ``test`` split: all 1,797 digits, ten classes named ``"0"``-``"9"``; ``train`` and ``val`` do not exist."""
    split = normalise_split(split)
    if split != "test":
        raise DataError(
            f"digits is an evaluation-only dataset: it has a test split (ten digit classes) and no {split!r} split; "
            "pre-train on another dataset and evaluate with `fewlabels fewshot-eval RUN_DIR data.dataset=digits`"
        )
    images, labels = digits_arrays()
    return ArrayFewShotDataset(
        images[:, :, :, None],
        labels.tolist(),
        image_size=options.image_size or DIGITS.metadata.image_size,
        source="digits",
    )


def check_digits(root: Path, report: CheckReport) -> None:
    """Count the bundled digits (images and classes of the test split)."""
    images, labels = digits_arrays()
    report.counts["train/val classes (evaluation-only)"] = 0
    report.counts["test classes"] = int(np.unique(labels).size)
    report.counts["test images"] = int(images.shape[0])


DIGITS = register_dataset(
    DatasetSpec(
        name="digits",
        description="bundled with scikit-learn: 1,797 scanned handwritten digits (8 x 8), test classes only (no ROOT)",
        check=check_digits,
        metadata=DatasetMetadata(ignore_index=None, image_size=32),
        few_shot=load_digits_fewshot,
        root="none",
    )
)
