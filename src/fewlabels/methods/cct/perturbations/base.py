"""The ``perturbations`` config section, what a perturbation may read, the three kinds of type, and their registry.

Each perturbation type is one :class:`Perturbation` subclass registered with :func:`register_perturbation`: its name,
the ``perturbations.<count_field>`` config field that holds its number of decoders, and how it applies. A
mask-foldable type (:class:`ChannelMaskPerturbation`, :class:`SpatialMaskPerturbation`) returns a multiplier of the
features that the fused path folds into the first layer of its decoders; an apply-to-copies type
(:class:`CopyPerturbation`) returns its perturbed copies. The registry's order is the order of the stacked aux
decoders, of the random draws and of ``PerturbationsConfig.counts``.

:class:`PerturbationsConfig` lives here, with the registry that its ``counts`` iterate and below the
:class:`PerturbationInput` that hands it to the types, so that the modules of the package import one another without a
cycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

from torch import Tensor

from fewlabels.config import fail
from fewlabels.methods.cct.fused import first_layer_of_copies, fold_channel_masks, fold_spatial_masks
from fewlabels.methods.cct.perturbations.functions import foreground_mask

if TYPE_CHECKING:
    from fewlabels.methods.cct.decoders import StackedUpsampleDecoders

__all__ = [
    "ChannelMaskPerturbation",
    "CopyPerturbation",
    "Fold",
    "MaskPerturbation",
    "Perturbation",
    "PerturbationInput",
    "PerturbationsConfig",
    "SpatialMaskPerturbation",
    "get_perturbation",
    "register_perturbation",
    "registered_perturbations",
    "unregister_perturbation",
]


# --- the configuration of the perturbations --------------------------------------------------------------------------


@dataclass
class PerturbationsConfig:
    """The ``perturbations`` section: how many aux decoders of each type (their sum is K) and each type's parameters.

    Every registered type reads its count from one field here (its ``count_field``) and its parameters from fields
    named after it; a new type adds its fields to this class. The defaults are the reference recipe's: K = 30.
    """

    vat: int = field(default=2, metadata={"help": "I-VAT decoders", "min": 0})
    vat_eps: float = field(default=2.0, metadata={"help": "norm of the adversarial perturbation", "gt": 0})
    vat_xi: float = field(
        default=1e-4,
        metadata={
            "help": "power-iteration step, relative to the feature norm (reference 1e-6 absolute vanishes)",
            "gt": 0,
        },
    )
    vat_iterations: int = field(default=1, metadata={"help": "power iterations", "min": 1})
    dropout: int = field(default=6, metadata={"help": "channel-dropout (Dropout2d) decoders", "min": 0})
    dropout_rate: float = field(default=0.5, metadata={"min": 0, "max": 0.99})
    cutout: int = field(default=6, metadata={"help": "G-Cutout decoders", "min": 0})
    cutout_erase: float = field(
        default=0.4, metadata={"help": "box side / object bounding-box side", "gt": 0, "max": 1}
    )
    cutout_min_area: int = field(default=2, metadata={"help": "smallest object cut, in feature cells", "min": 1})
    cutout_max_objects: int = field(default=32, metadata={"help": "largest objects cut per image", "min": 1})
    context_mask: int = field(default=2, metadata={"help": "Con-Msk decoders (objects only)", "min": 0})
    object_mask: int = field(default=2, metadata={"help": "Obj-Msk decoders (context only)", "min": 0})
    feature_drop: int = field(default=6, metadata={"help": "F-Drop decoders", "min": 0})
    feature_drop_gamma: tuple[float, float] = field(
        default=(0.7, 0.9), metadata={"help": "range of gamma: drop where attention >= gamma * max"}
    )
    feature_noise: int = field(default=6, metadata={"help": "F-Noise decoders", "min": 0})
    feature_noise_range: float = field(default=0.3, metadata={"help": "N ~ U(-r, r)", "min": 0})
    background_classes: list[int] | None = field(
        default=None,
        metadata={
            "help": "classes that are not objects for G-Cutout/Con-Msk/Obj-Msk (default: the dataset's "
            "non-thing classes, e.g. [0] on VOC)"
        },
    )
    mask_source: Literal["main", "aux"] = field(
        default="main",
        metadata={
            "help": "prediction whose objects G-Cutout/Con-Msk/Obj-Msk follow: main = the main decoder's (the "
            "reference), aux = the mean of the K aux decoders' softmax on the unperturbed features (no gradient)"
        },
    )

    @property
    def counts(self) -> dict[str, int]:
        """Decoders per perturbation type, in the registry's order, which is the order of the stacked decoders."""
        return {perturbation.name: perturbation.count(self) for perturbation in registered_perturbations()}

    @property
    def total(self) -> int:
        """K, the number of auxiliary decoders."""
        return sum(self.counts.values())

    def validate(self) -> None:
        """Reject a section without any aux decoder, an empty F-Drop range and negative background classes."""
        if self.total < 1:
            fail("perturbations", "at least one auxiliary decoder is needed (all counts are 0)")
        lo, hi = self.feature_drop_gamma
        if not 0 < lo <= hi <= 1:
            fail("perturbations.feature_drop_gamma", f"must be a range 0 < low <= high <= 1, got {[lo, hi]}")
        if self.background_classes is not None and any(c < 0 for c in self.background_classes):
            fail("perturbations.background_classes", f"class indices are >= 0, got {self.background_classes}")


# --- the ordered registry of perturbation types ---------------------------------------------------------------------

Fold = Literal["copies", "channel", "spatial"]


class PerturbationInput:
    """What the perturbations of one pass may read: the features, the main prediction, the settings and the decoders.

    Args:
        z: encoder output ``[B, D, h, w]`` of the unlabeled images.
        target: main-decoder prediction ``[B, C, H, W]`` (probabilities), the consistency target.
        config: the ``perturbations`` section (the counts and every type's parameters).
        background_classes: classes that are not objects (G-Cutout, Con-Msk, Obj-Msk).
        aux: the stacked aux decoders (I-VAT runs its power iteration through its own decoders).
        chunk_elements: full-resolution elements that a fused computation holds at once (``None``: all at once).
        guide: the prediction ``[B, C, H', W']`` (probabilities, any size that resizes to the features') whose
            objects the types that follow the objects mask (:attr:`foreground`) instead of ``target``'s: with
            ``mask_source="aux"``, the mean of the aux decoders' predictions at the feature size. ``None``:
            ``target``'s objects (the reference).
    """

    def __init__(
        self,
        z: Tensor,
        target: Tensor,
        config: PerturbationsConfig,
        background_classes: Sequence[int],
        aux: StackedUpsampleDecoders,
        chunk_elements: int | None,
        guide: Tensor | None = None,
    ) -> None:
        self.z = z
        self.target = target
        self.config = config
        self.background_classes = tuple(background_classes)
        self.aux = aux
        self.chunk_elements = chunk_elements
        self.guide = guide
        self._foreground: Tensor | None = None

    @property
    def foreground(self) -> Tensor:
        """The foreground of the guide (default: of the main prediction) at the feature size, ``[B, h, w]``, computed
        once per pass.

        It draws no random numbers, so computing it on first use leaves the order of the random draws unchanged.
        """
        if self._foreground is None:
            h, w = self.z.shape[-2:]
            objects = self.target if self.guide is None else self.guide
            self._foreground = foreground_mask(objects, (h, w), self.background_classes)
        return self._foreground


class Perturbation(ABC):
    """One type of CCT perturbation, applied to the encoder output by each of its aux decoders.

    A type sets two class attributes and derives from one of the three kinds below, which sets the third:

    * ``name``: the registry key, used in ``PerturbationsConfig.counts`` and ``CCTModel.groups``;
    * ``count_field``: the ``PerturbationsConfig`` field that holds its number of aux decoders;
    * ``fold``: how the fused path applies it. :class:`ChannelMaskPerturbation` (``"channel"``) and
      :class:`SpatialMaskPerturbation` (``"spatial"``) are mask-foldable: the perturbed copies are ``z * mask`` and the
      mask is folded into the first layer of the decoders. :class:`CopyPerturbation` (``"copies"``) applies to copies:
      every decoder gets its own perturbed copy of ``z``.

    A type that reads :attr:`PerturbationInput.foreground` sets ``follows_objects = True``: with
    ``perturbations.mask_source="aux"`` the model computes the aux decoders' prediction that the foreground then
    follows only when such a type has decoders.

    Every type implements :meth:`copies`, which the reference path uses; the mask-foldable ones implement it through
    their mask. Types are registered with :func:`register_perturbation`, which instantiates them once.
    """

    name: ClassVar[str] = ""
    count_field: ClassVar[str] = ""
    fold: ClassVar[Fold]
    follows_objects: ClassVar[bool] = False

    def count(self, config: PerturbationsConfig) -> int:
        """The number of aux decoders of this type, the value of ``config.<count_field>``."""
        try:
            value = getattr(config, self.count_field)
        except AttributeError:
            raise TypeError(
                f"perturbation {self.name!r} reads its decoder count from perturbations.{self.count_field}, a field "
                f"that {type(config).__name__} does not have"
            ) from None
        return int(value)

    @abstractmethod
    def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
        """The ``n`` perturbed copies ``[n, B, D, h, w]`` of ``inputs.z``, one for each aux decoder in ``decoders``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, count_field={self.count_field!r}, fold={self.fold!r})"


class CopyPerturbation(Perturbation):
    """An apply-to-copies type: each of its decoders gets its own perturbed copy of the features.

    This suits a perturbation that is not a multiplier constant over the channels or over the positions (F-Noise), or
    that needs its own computation per decoder (I-VAT's power iteration).
    """

    fold = "copies"

    def first_layer(self, inputs: PerturbationInput, n: int, decoders: slice, weight: Tensor, zf: Tensor) -> Tensor:
        """The classifier outputs ``[n, B, C, h*w]`` of ``weight [n, C, D]`` on the copies (the fused path).

        ``zf [B, D, h*w]`` is ``inputs.z`` flattened, for a type that forms its copies in that layout.
        """
        return first_layer_of_copies(weight, self.copies(inputs, n, decoders).flatten(-2))


class MaskPerturbation(Perturbation):
    """A mask-foldable type: the perturbed copies are ``z * mask``, and the fused path folds the mask into the first
    layer of the decoders instead of forming the copies."""

    @abstractmethod
    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The multiplier of each of the ``n`` copies, broadcastable to ``[n, B, D, h, w]`` (shape set by the kind)."""

    @abstractmethod
    def folded_mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """:meth:`mask` in the layout that :meth:`first_layer` takes, so that a run of types can be concatenated."""

    @abstractmethod
    def first_layer(self, weight: Tensor, zf: Tensor, masks: Tensor) -> Tensor:
        """The classifier outputs ``[n, B, C, h*w]`` of ``weight [n, C, D]`` on ``zf [B, D, h*w]`` times ``masks``."""

    def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
        """The copies ``z * mask`` that the fused path never forms (reference path and tests)."""
        return inputs.z.unsqueeze(0) * self.mask(inputs, n)


class ChannelMaskPerturbation(MaskPerturbation):
    """A mask-foldable type whose mask is constant over the positions: :meth:`mask` returns ``[n, B, D or 1, 1, 1]``.

    The fused path moves the mask onto the weights of the first layer, ``W (z * m) = (W * m) z``.
    """

    fold = "channel"

    def folded_mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The mask as channel multipliers ``[n, B, D]``."""
        b, d = inputs.z.shape[:2]
        return self.mask(inputs, n).expand(n, b, d, 1, 1)[..., 0, 0]

    def first_layer(self, weight: Tensor, zf: Tensor, masks: Tensor) -> Tensor:
        """The first layer with channel multipliers ``masks [n, B, D]`` on its weights."""
        return fold_channel_masks(weight, zf, masks)


class SpatialMaskPerturbation(MaskPerturbation):
    """A mask-foldable type whose mask is constant over the channels: :meth:`mask` returns ``[n, B, 1, h, w]``.

    The mask may also be constant over the positions (``[n, B, 1, 1, 1]``, a scale per copy and sample). The fused path
    applies the mask to the output of the first layer, ``W (z * m) = (W z) * m``.
    """

    fold = "spatial"

    def folded_mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The mask as position multipliers ``[n, B, h, w]``."""
        b = inputs.z.shape[0]
        h, w = inputs.z.shape[-2:]
        return self.mask(inputs, n).expand(n, b, 1, h, w)[:, :, 0]

    def first_layer(self, weight: Tensor, zf: Tensor, masks: Tensor) -> Tensor:
        """The first layer followed by the position multipliers ``masks [n, B, h, w]``."""
        return fold_spatial_masks(weight, zf, masks.flatten(-2))


_REGISTRY: dict[str, Perturbation] = {}
_KINDS = (CopyPerturbation, ChannelMaskPerturbation, SpatialMaskPerturbation)

P = TypeVar("P", bound="type[Perturbation]")


def register_perturbation(cls: P) -> P:
    """Class decorator: add a perturbation type to the registry, after every type registered before it.

    The registry's order is the order of the aux decoders, of the random draws and of ``PerturbationsConfig.counts``.
    The class must derive from :class:`CopyPerturbation`, :class:`ChannelMaskPerturbation` or
    :class:`SpatialMaskPerturbation`, and its name and count field must not be taken yet.
    """
    kind = next((k for k in _KINDS if issubclass(cls, k)), None)
    if kind is None or cls.fold != kind.fold:
        raise TypeError(
            f"{cls.__name__} must derive from CopyPerturbation, ChannelMaskPerturbation or SpatialMaskPerturbation"
        )
    if not cls.name or not cls.count_field:
        raise ValueError(f"{cls.__name__} needs a name and a count_field")
    for other in _REGISTRY.values():
        if cls.name == other.name or cls.count_field == other.count_field:
            raise ValueError(
                f"{cls.__name__} ({cls.name!r}, field {cls.count_field!r}) clashes with the registered {other!r}"
            )
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_perturbation(name: str) -> Perturbation:
    """Remove the type ``name`` from the registry and return it (for tests and plug-ins that register their own)."""
    return _REGISTRY.pop(get_perturbation(name).name)


def get_perturbation(name: str) -> Perturbation:
    """The registered type called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown perturbation {name!r}; registered: {', '.join(_REGISTRY)}") from None


def registered_perturbations() -> tuple[Perturbation, ...]:
    """Every registered type, in the registry's order."""
    return tuple(_REGISTRY.values())
