"""``scenes-shift``: the embedded ``scenes`` under a colour shift, a target domain for multi-domain CCT and UDA.

The same generator, classes and masks as ``scenes`` (:mod:`fewlabels.data.scenes`), but other scenes (dataset seed 1,
so no image is shared with ``scenes``) seen through another "camera": the colour channels are rotated (R, G, B) ->
(B, R, G) and the contrast is lowered around a darker mean (``0.6 x + 30``). A model trained on ``scenes`` alone loses
accuracy on these images; CCT with ``scenes-shift`` as a label-free domain (``domains: [{dataset: scenes-shift,
label_free: true}]``) trains on them through the consistency loss only: "training under a distribution shift".

``scenes-dim``: the same other scenes under a milder shift that keeps each colour's hue order (a dim, noisy
camera): the contrast is halved around a darker level (``0.5 x + 20``) and per-pixel sensor noise is added (normal,
std 8, drawn from the dataset seed). Under the rotation of ``scenes-shift`` a colour means another class, so the
classes that ``scenes`` tells apart by colour cannot be recovered from unlabeled images; under ``scenes-dim`` they
stay recognisable, as in the thesis' shifts between real cameras and cities.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fewlabels.data.common import CheckReport
from fewlabels.data.registry import DatasetMetadata, DatasetSpec, register_dataset
from fewlabels.data.scenes import (
    SCENE_CLASSES,
    SCENE_THING_CLASSES,
    ScenesDataset,
    build_generated_segmentation,
    check_scenes,
)
from fewlabels.data.segmentation import SegmentationData, SegmentationOptions, Transform

__all__ = ["SCENES_DIM", "SCENES_SHIFT", "DimScenes", "ShiftedScenes", "colour_shift", "dim_shift"]

#: Dataset seed of the shifted scenes (``scenes`` uses 0): other scenes than the source domain's.
SHIFT_SEED = 1


def colour_shift(images: np.ndarray) -> np.ndarray:
    """The shift of ``images [..., 3]`` (uint8): channels rotated (R, G, B) -> (B, R, G), then ``0.6 x + 30``."""
    rotated = images[..., [2, 0, 1]].astype(np.float32)
    return np.clip(np.round(0.6 * rotated + 30.0), 0, 255).astype(np.uint8)


def dim_shift(images: np.ndarray, seed: Sequence[int]) -> np.ndarray:
    """The ``scenes-dim`` shift of ``images [N, H, W, 3]`` (uint8): ``0.5 x + 20`` plus normal noise of std 8 per
    pixel and channel (drawn from ``seed``), rounded and clipped to 0..255. The channels keep their order."""
    noise = np.random.default_rng(seed).normal(0.0, 8.0, images.shape).astype(np.float32)
    return np.clip(np.round(0.5 * images.astype(np.float32) + 20.0 + noise), 0, 255).astype(np.uint8)


class _OtherCamera(ScenesDataset, abc.ABC):
    """:class:`~fewlabels.data.scenes.ScenesDataset` (same arguments; ``seed`` defaults to :data:`SHIFT_SEED`) with
    every image passed through :meth:`camera`; the masks are unchanged."""

    def __init__(self, split: str = "train", n: int | None = None, size: int = 96, **kwargs: object) -> None:
        kwargs.setdefault("seed", SHIFT_SEED)
        super().__init__(split, n, size, **kwargs)  # type: ignore[arg-type]
        seed = kwargs["seed"]
        assert isinstance(seed, int)
        # A new array: the generator's arrays may be cached and shared with plain `scenes` datasets.
        self.images = self.camera(self.images, seed, split)

    @staticmethod
    @abc.abstractmethod
    def camera(images: np.ndarray, seed: int, split: str) -> np.ndarray:
        """The camera's version of ``images [N, H, W, 3]`` (uint8) of the dataset seed's ``split``."""


class ShiftedScenes(_OtherCamera):
    """The ``scenes-shift`` images: :func:`colour_shift`."""

    @staticmethod
    def camera(images: np.ndarray, seed: int, split: str) -> np.ndarray:
        return colour_shift(images)


class DimScenes(_OtherCamera):
    """The ``scenes-dim`` images: :func:`dim_shift`, its noise drawn from the dataset seed and the split."""

    @staticmethod
    def camera(images: np.ndarray, seed: int, split: str) -> np.ndarray:
        return dim_shift(images, [seed, 0 if split == "train" else 1])


def check_scenes_shift(root: Path, report: CheckReport) -> None:
    """The sources of ``scenes`` (the shift needs nothing more)."""
    check_scenes(root, report)


def _register_camera(name: str, dataset: type[_OtherCamera], description: str) -> DatasetSpec:
    """Register ``name``: as ``scenes``, ``options.labeled`` of ``scenes_train`` scenes of ``dataset`` labeled, the
    rest unlabeled, ``scenes_val`` validation scenes; dataset seed :data:`SHIFT_SEED` + ``scenes_seed``."""
    metadata = DatasetMetadata(class_names=SCENE_CLASSES, thing_classes=SCENE_THING_CLASSES)

    def build(options: SegmentationOptions, transform: Transform) -> SegmentationData:
        seed = SHIFT_SEED + options.scenes_seed
        return build_generated_segmentation(dataset, metadata, options, transform, seed=seed)

    spec = DatasetSpec(
        name=name, description=description, check=check_scenes_shift, metadata=metadata, segmentation=build, root="none"
    )
    return register_dataset(spec)


SCENES_SHIFT = _register_camera(
    "scenes-shift",
    ShiftedScenes,
    "embedded: `scenes` under a colour shift (other scenes), a target domain for CCT / UDA (no ROOT)",
)
SCENES_DIM = _register_camera(
    "scenes-dim",
    DimScenes,
    "embedded: `scenes` under a dim, noisy camera (other scenes; colours keep their order), a target domain for "
    "CCT / UDA (no ROOT)",
)
