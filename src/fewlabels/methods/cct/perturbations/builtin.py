"""The built-in perturbation types of CCT, registered in the order of the reference's decoders.

A new type is appended after them (see docs/contributing.md): its class here, its fields in
:class:`~fewlabels.methods.cct.perturbations.base.PerturbationsConfig`, and its test.
"""

from __future__ import annotations

from torch import Tensor

from fewlabels.methods.cct.fused import first_layer_of_copies, fused_vat_direction
from fewlabels.methods.cct.perturbations.base import (
    ChannelMaskPerturbation,
    CopyPerturbation,
    PerturbationInput,
    SpatialMaskPerturbation,
    register_perturbation,
)
from fewlabels.methods.cct.perturbations.functions import (
    cutout_keep_mask,
    feature_drop_keep,
    feature_noise,
    spatial_dropout_mask,
)

__all__ = [
    "IVAT",
    "ChannelDropout",
    "ContextMasking",
    "FeatureDrop",
    "FeatureNoise",
    "GuidedCutout",
    "ObjectMasking",
]


@register_perturbation
class IVAT(CopyPerturbation):
    """I-VAT: ``z + eps * r`` with ``r`` the adversarial direction of each VAT decoder, from its own power iteration.

    Parameters: ``vat_eps``, ``vat_xi``, ``vat_iterations``. The power iteration's gradient comes from the fused stages
    (:func:`~fewlabels.methods.cct.fused.fused_vat_direction`, tested equal to the autograd :func:`vat_direction`).
    """

    name = "vat"
    count_field = "vat"

    def direction(self, inputs: PerturbationInput, decoders: slice) -> Tensor:
        """The unit-norm adversarial directions ``r [n, B, D, h, w]`` of the VAT decoders ``decoders``."""
        cfg, aux = inputs.config, inputs.aux
        return fused_vat_direction(
            inputs.z,
            aux.classifier[decoders],
            aux.stage_weight[:, decoders],
            aux.stage_bias[:, decoders],
            cfg.vat_xi,
            cfg.vat_iterations,
            chunk_elements=inputs.chunk_elements,
        )

    def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
        """The copies ``z + eps * r``, one per VAT decoder."""
        return inputs.z.unsqueeze(0) + inputs.config.vat_eps * self.direction(inputs, decoders)

    def first_layer(self, inputs: PerturbationInput, n: int, decoders: slice, weight: Tensor, zf: Tensor) -> Tensor:
        """The first layer on the copies, formed from the flattened features ``zf``.

        The values are those of :meth:`copies`. Building the copies on ``zf``, which the mask-foldable types use too,
        fixes the order in which autograd sums the gradients reaching ``z``; runs at a given seed stay bit-for-bit
        those of earlier versions.
        """
        x = zf.unsqueeze(0) + inputs.config.vat_eps * self.direction(inputs, decoders).flatten(-2)  # [n, B, D, hw]
        return first_layer_of_copies(weight, x)


@register_perturbation
class ChannelDropout(ChannelMaskPerturbation):
    """Dropout: whole channels zeroed with probability ``dropout_rate`` (see :func:`spatial_dropout`)."""

    name = "dropout"
    count_field = "dropout"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The ``Dropout2d`` multipliers ``[n, B, D, 1, 1]``."""
        return spatial_dropout_mask(inputs.z, n, inputs.config.dropout_rate)


@register_perturbation
class GuidedCutout(SpatialMaskPerturbation):
    """G-Cutout: a random box erased inside each predicted object (see :func:`cutout_keep_mask`)."""

    name = "cutout"
    count_field = "cutout"
    follows_objects = True

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The keep-masks ``[n, B, 1, h, w]``, new boxes for every decoder."""
        cfg = inputs.config
        return cutout_keep_mask(inputs.foreground, n, cfg.cutout_erase, cfg.cutout_min_area, cfg.cutout_max_objects)


@register_perturbation
class ContextMasking(SpatialMaskPerturbation):
    """Con-Msk: the context removed, only the predicted objects kept (see :func:`context_masking`)."""

    name = "context_mask"
    count_field = "context_mask"
    follows_objects = True

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The foreground ``[n, B, 1, h, w]``, the same for every decoder."""
        return inputs.foreground[None, :, None].expand(n, -1, -1, -1, -1)


@register_perturbation
class ObjectMasking(SpatialMaskPerturbation):
    """Obj-Msk: the predicted objects removed, only the context kept (see :func:`object_masking`)."""

    name = "object_mask"
    count_field = "object_mask"
    follows_objects = True

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The background ``[n, B, 1, h, w]``, the same for every decoder."""
        return (1.0 - inputs.foreground)[None, :, None].expand(n, -1, -1, -1, -1)


@register_perturbation
class FeatureDrop(SpatialMaskPerturbation):
    """F-Drop: the most active positions zeroed, with ``gamma ~ U(feature_drop_gamma)`` (see :func:`feature_drop`)."""

    name = "feature_drop"
    count_field = "feature_drop"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The keep-masks ``[n, B, 1, h, w]``, one gamma per decoder."""
        lo, hi = inputs.config.feature_drop_gamma
        return feature_drop_keep(inputs.z, n, (lo, hi))


@register_perturbation
class FeatureNoise(CopyPerturbation):
    """F-Noise: ``z * (1 + N)`` with ``N ~ U(-feature_noise_range, feature_noise_range)`` (see :func:`feature_noise`).

    The noise depends on both the channel and the position, so it cannot be folded into the first layer.
    """

    name = "feature_noise"
    count_field = "feature_noise"

    def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
        """The noisy copies, one noise draw per decoder."""
        return feature_noise(inputs.z, n, inputs.config.feature_noise_range)
