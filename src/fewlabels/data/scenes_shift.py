"""``scenes-shift``: the embedded ``scenes`` under a colour shift, a target domain for multi-domain CCT and UDA.

The same generator, classes and masks as ``scenes`` (:mod:`fewlabels.data.scenes`), but other scenes (dataset seed 1,
so no image is shared with ``scenes``) seen through another "camera": the colour channels are rotated (R, G, B) ->
(B, R, G) and the contrast is lowered around a darker mean (``0.6 x + 30``). A model trained on ``scenes`` alone loses
accuracy on these images; CCT with ``scenes-shift`` as a label-free domain (``domains: [{dataset: scenes-shift,
label_free: true}]``) trains on them through the consistency loss only: "training under a distribution shift".
"""

from __future__ import annotations

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

__all__ = ["SCENES_SHIFT", "ShiftedScenes", "colour_shift"]

#: Dataset seed of the shifted scenes (``scenes`` uses 0): other scenes than the source domain's.
SHIFT_SEED = 1


def colour_shift(images: np.ndarray) -> np.ndarray:
    """The shift of ``images [..., 3]`` (uint8): channels rotated (R, G, B) -> (B, R, G), then ``0.6 x + 30``."""
    rotated = images[..., [2, 0, 1]].astype(np.float32)
    return np.clip(np.round(0.6 * rotated + 30.0), 0, 255).astype(np.uint8)


class ShiftedScenes(ScenesDataset):
    """:class:`~fewlabels.data.scenes.ScenesDataset` (same arguments; ``seed`` defaults to :data:`SHIFT_SEED`) with
    every image colour-shifted (:func:`colour_shift`); the masks are unchanged."""

    def __init__(self, split: str = "train", n: int | None = None, size: int = 96, **kwargs: object) -> None:
        kwargs.setdefault("seed", SHIFT_SEED)
        super().__init__(split, n, size, **kwargs)  # type: ignore[arg-type]
        # A copy: the generator's arrays may be cached and shared with plain `scenes` datasets.
        self.images = colour_shift(self.images)


def build_scenes_shift(options: SegmentationOptions, transform: Transform) -> SegmentationData:
    """As ``scenes``: ``options.labeled`` of ``scenes_train`` shifted scenes labeled, the rest unlabeled;
    ``scenes_val`` shifted validation scenes; dataset seed :data:`SHIFT_SEED` + ``scenes_seed``."""
    seed = SHIFT_SEED + options.scenes_seed
    return build_generated_segmentation(ShiftedScenes, SCENES_SHIFT.metadata, options, transform, seed=seed)


def check_scenes_shift(root: Path, report: CheckReport) -> None:
    """The sources of ``scenes`` (the shift needs nothing more)."""
    check_scenes(root, report)


SCENES_SHIFT = register_dataset(
    DatasetSpec(
        name="scenes-shift",
        description="embedded: `scenes` under a colour shift (other scenes), a target domain for CCT / UDA (no ROOT)",
        check=check_scenes_shift,
        metadata=DatasetMetadata(class_names=SCENE_CLASSES, thing_classes=SCENE_THING_CLASSES),
        segmentation=build_scenes_shift,
        root="none",
    )
)
