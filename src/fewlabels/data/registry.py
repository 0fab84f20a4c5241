"""The dataset registry: every dataset the library can read, by the one name that configs and ``data check`` use.

A dataset is one module of this package that, when imported, passes a :class:`DatasetSpec` to :func:`register_dataset`:
its name, a description, its layout checker (``fewlabels data check NAME ROOT``), its metadata (class names, ignore
index, object classes, channels) and one builder per family it serves:

==============  ==============================================================  =================================
family          builder                                                         used by
==============  ==============================================================  =================================
segmentation    ``(SegmentationOptions, transform) -> SegmentationData``       supervised, cct (``data.dataset``)
unsupervised    ``(UnsupervisedOptions) -> UnsupervisedData``                   ac (``data.dataset``)
few-shot        ``(FewShotOptions, split) -> FewShotDataset``                   scl, protonet (``data.dataset``)
text            the dataset's reader function                                   relbitfit (``data.dataset``)
==============  ==============================================================  =================================

The options are plain data-level dataclasses (``segmentation.py``, ``unsupervised.py``, ``fewshot.py``): a
method fills them from its config, so this package never sees a method's config class. Adding a dataset is one new
module plus its name in :data:`BUILTIN_MODULES` (or, outside the package, in :data:`PLUGIN_MODULES`) and its test;
``docs/contributing.md`` has a worked example.

Lookups (:func:`get_dataset`, :func:`dataset_names`) import the registering modules first. Each dataset has one
name; ``aliases`` are older names still accepted where they are unambiguous (``folder`` inside one family,
``seg-folder`` in ``data check``).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fewlabels.data.base import DataError
from fewlabels.data.common import IGNORE_INDEX, CheckerFunc, DatasetMetadata
from fewlabels.data.fewshot import FewShotDataset, FewShotOptions
from fewlabels.data.segmentation import SegmentationData, SegmentationOptions, Transform
from fewlabels.data.transforms import SegAugment
from fewlabels.data.unsupervised import UnsupervisedData, UnsupervisedOptions

__all__ = [
    "BUILTIN_MODULES",
    "DATASETS",
    "FAMILIES",
    "PLUGIN_MODULES",
    "DatasetMetadata",
    "DatasetSpec",
    "build_unsupervised_data",
    "dataset_names",
    "describe_datasets",
    "get_dataset",
    "load_fewshot",
    "load_segmentation",
    "lookup_dataset",
    "register_dataset",
    "suggest",
]

#: The method families a dataset can serve.
FAMILIES: tuple[str, ...] = ("segmentation", "unsupervised", "few-shot", "text")

#: The modules of this package that register the built-in datasets, imported before every lookup.
BUILTIN_MODULES: tuple[str, ...] = (
    "scenes",
    "scenes_shift",
    "digit_mosaics",
    "voc",
    "cityscapes",
    "seg_folder",
    "cocostuff",
    "potsdam",
    "image_folder",
    "glyphs",
    "digits",
    "mini_imagenet",
    "tiered_imagenet",
    "cifar_fs",
    "fc100",
    "fewshot_folder",
    "glue",
    "rotten_tomatoes",
    "text_files",
)

#: Further modules (full dotted names, e.g. your own package's) that register datasets; imported after the built-in
#: ones. A module that is itself missing is skipped; an import error inside an existing module propagates.
PLUGIN_MODULES: tuple[str, ...] = ()

SegmentationBuilder = Callable[[SegmentationOptions, Transform], SegmentationData]
UnsupervisedBuilder = Callable[[UnsupervisedOptions], UnsupervisedData]
FewShotBuilder = Callable[[FewShotOptions, str], FewShotDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset. Exactly the families whose builder is set are the ones it serves.

    Attributes:
        name: the name configs (``data.dataset``) and ``fewlabels data check`` use.
        description: one line for listings.
        check: the layout checker ``(root, report) -> None``.
        metadata: labels, ignore index, object classes, channels.
        layout: the expected on-disk layout, shown in error messages.
        segmentation, unsupervised, few_shot, text: the builder (or reader) of each family served.
        root: what ``data check`` expects as ROOT: a folder, any existing path (a file or a folder), or nothing
            (generated and packaged datasets).
        aliases: older names still accepted where unambiguous.
    """

    name: str
    description: str
    check: CheckerFunc
    metadata: DatasetMetadata
    layout: str = ""
    segmentation: SegmentationBuilder | None = None
    unsupervised: UnsupervisedBuilder | None = None
    few_shot: FewShotBuilder | None = None
    text: Callable[..., Any] | None = None
    root: Literal["folder", "path", "none"] = "folder"
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip() or " " in self.name:
            raise ValueError(f"invalid dataset name {self.name!r}")
        if not self.families:
            raise ValueError(f"dataset {self.name!r} serves no family: give it at least one builder")

    @property
    def families(self) -> tuple[str, ...]:
        """The families this dataset serves, in the order of :data:`FAMILIES`."""
        builders = (self.segmentation, self.unsupervised, self.few_shot, self.text)
        return tuple(family for family, builder in zip(FAMILIES, builders, strict=True) if builder is not None)


#: Registered datasets by name.
DATASETS: dict[str, DatasetSpec] = {}


def _qualified(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register ``spec`` under its name and return it.

    Registering a different dataset under a taken name is a ValueError; re-importing the module that registered it
    (same checker function) replaces the entry.
    """
    existing = DATASETS.get(spec.name)
    if existing is not None and _qualified(existing.check) != _qualified(spec.check):
        raise ValueError(
            f"dataset {spec.name!r} is already registered (checker {_qualified(existing.check)}); "
            f"cannot register another one (checker {_qualified(spec.check)})"
        )
    DATASETS[spec.name] = spec
    return spec


def _load_modules() -> None:
    for name in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise


def _check_family(family: str | None) -> None:
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown dataset family {family!r}; the families are {', '.join(FAMILIES)}")


def dataset_names(family: str | None = None) -> list[str]:
    """Sorted names of the registered datasets (of ``family`` only, when given)."""
    _check_family(family)
    _load_modules()
    return sorted(name for name, spec in DATASETS.items() if family is None or family in spec.families)


def suggest(name: str, choices: list[str]) -> str:
    """`` Did you mean 'x'?`` (up to three close choices), or an empty string."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def describe_datasets(family: str | None = None) -> str:
    """One line per registered dataset (of ``family``, when given): name, families and description."""
    names = dataset_names(family)
    width = max((len(n) for n in names), default=0)
    fam = {n: "/".join(DATASETS[n].families) for n in names}
    fam_width = max((len(f) for f in fam.values()), default=0)
    return "\n".join(f"  {n:<{width}}  {fam[n]:<{fam_width}}  {DATASETS[n].description}" for n in names)


def lookup_dataset(name: str, family: str | None = None) -> DatasetSpec | None:
    """The dataset called ``name`` (serving ``family``, when given), found by name or else by alias; None when
    there is none. An alias shared by several datasets is a DataError naming them."""
    _check_family(family)
    _load_modules()
    spec = DATASETS.get(name)
    if spec is not None and (family is None or family in spec.families):
        return spec
    matches = [s for s in DATASETS.values() if name in s.aliases and (family is None or family in s.families)]
    if len(matches) > 1:
        named = ", ".join(f"{s.name} ({'/'.join(s.families)})" for s in sorted(matches, key=lambda s: s.name))
        raise DataError(f"{name!r} is the old name of several datasets: {named}; use one of these names")
    return matches[0] if matches else None


def get_dataset(name: str, family: str | None = None) -> DatasetSpec:
    """The dataset called ``name`` (serving ``family``, when given); DataError with a suggestion when unknown."""
    spec = lookup_dataset(name, family)
    if spec is not None:
        return spec
    what = f"{family} dataset" if family else "dataset"
    other = DATASETS.get(name)
    if other is not None:
        raise DataError(
            f"{name!r} is a {'/'.join(other.families)} dataset, not a {family} one. The {family} datasets are:\n"
            f"{describe_datasets(family)}"
        )
    raise DataError(
        f"unknown {what} {name!r}.{suggest(name, dataset_names(family))} The {what}s are:\n{describe_datasets(family)}"
    )


# ----------------------------------------------------------------------------------------------------------
# Building a family's datasets from its options


def load_segmentation(name: str, options: SegmentationOptions) -> SegmentationData:
    """Labeled / unlabeled / validation datasets of the segmentation dataset ``name`` (augmented training sets)."""
    spec = get_dataset(name, "segmentation")
    assert spec.segmentation is not None
    ignore = spec.metadata.ignore_index
    augment = SegAugment(
        options.crop_size,
        (options.scale[0], options.scale[1]),
        options.hflip,
        IGNORE_INDEX if ignore is None else ignore,
    )
    return spec.segmentation(options, augment)


def build_unsupervised_data(
    name: str,
    root: str = "",
    split: str = "",
    eval_split: str = "",
    input_size: int = 128,
    scale: float = 1.0,
    scenes_n: int = 600,
    scenes_size: int = 96,
    seed: int = 0,
) -> UnsupervisedData:
    """Training and evaluation images of the unsupervised dataset ``name`` (fields of :class:`UnsupervisedOptions`).

    ``split`` selects the training images, ``eval_split`` the evaluation images ('' = the training images: IIC's
    "IID" setting); their meaning is the dataset's (a COCO split, Potsdam list names, a sub-folder).
    """
    spec = get_dataset(name, "unsupervised")
    assert spec.unsupervised is not None
    options = UnsupervisedOptions(root, split, eval_split, input_size, scale, scenes_n, scenes_size, seed)
    return spec.unsupervised(options)


def load_fewshot(
    name: str,
    root: str | Path = "",
    split: str = "train",
    image_size: int | None = None,
    split_file: str | Path = "",
    per_class: int = 24,
    seed: int = 0,
) -> FewShotDataset:
    """The ``train`` (base), ``val`` or ``test`` (novel) split of the few-shot dataset ``name``.

    ``image_size`` None (or 0) is the dataset's default side; ``split_file`` names the classes of each split for
    folder datasets; ``per_class`` and ``seed`` shape generated datasets.
    """
    spec = get_dataset(name, "few-shot")
    assert spec.few_shot is not None
    options = FewShotOptions(str(root), int(image_size or 0), str(split_file or ""), per_class, seed)
    return spec.few_shot(options, split)
