"""CCT's feature perturbations: the functions that perturb the encoder output, and the ordered registry of types.

The package has four modules, bottom up:

* :mod:`~fewlabels.methods.cct.perturbations.functions`: the perturbations as functions of tensors (``z`` to its
  ``n`` perturbed copies, or to the mask that makes them);
* :mod:`~fewlabels.methods.cct.perturbations.base`: the ``perturbations`` config section
  (:class:`PerturbationsConfig`), what a type may read in one pass (:class:`PerturbationInput`), the three kinds of
  type (:class:`CopyPerturbation`, :class:`ChannelMaskPerturbation`, :class:`SpatialMaskPerturbation`) and the ordered
  registry (:func:`register_perturbation`);
* :mod:`~fewlabels.methods.cct.perturbations.groups`: the slice of the K stacked aux decoders that each type owns
  (:func:`decoder_groups`) and the runs that the fused path computes together (:func:`fold_runs`);
* :mod:`~fewlabels.methods.cct.perturbations.builtin`: the built-in types, registered in the reference's order.

The registry's order is the order of the stacked aux decoders, of the random draws and of
``PerturbationsConfig.counts``; both the fused path (:meth:`~fewlabels.methods.cct.model.CCTModel.classifier_outputs`)
and the reference path (:meth:`~fewlabels.methods.cct.model.CCTModel.perturbed_features`) iterate it through
:func:`decoder_groups`. Importing this package registers the built-in types; every name is importable from here.
"""

from __future__ import annotations

from fewlabels.methods.cct.fused import l2_normalize
from fewlabels.methods.cct.perturbations.base import (
    ChannelMaskPerturbation,
    CopyPerturbation,
    MaskPerturbation,
    Perturbation,
    PerturbationInput,
    PerturbationsConfig,
    SpatialMaskPerturbation,
    get_perturbation,
    register_perturbation,
    registered_perturbations,
    unregister_perturbation,
)
from fewlabels.methods.cct.perturbations.builtin import (
    IVAT,
    ChannelDropout,
    ContextMasking,
    FeatureDrop,
    FeatureNoise,
    GuidedCutout,
    ObjectMasking,
)
from fewlabels.methods.cct.perturbations.functions import (
    connected_components,
    context_masking,
    cutout_keep_mask,
    feature_drop,
    feature_drop_keep,
    feature_drop_mask,
    feature_noise,
    foreground_mask,
    guided_cutout,
    object_masking,
    spatial_dropout,
    spatial_dropout_mask,
    vat_direction,
)
from fewlabels.methods.cct.perturbations.groups import DecoderGroup, decoder_groups, fold_runs

__all__ = [
    "ChannelDropout",
    "ChannelMaskPerturbation",
    "ContextMasking",
    "CopyPerturbation",
    "DecoderGroup",
    "FeatureDrop",
    "FeatureNoise",
    "GuidedCutout",
    "IVAT",
    "MaskPerturbation",
    "ObjectMasking",
    "Perturbation",
    "PerturbationInput",
    "PerturbationsConfig",
    "SpatialMaskPerturbation",
    "connected_components",
    "context_masking",
    "cutout_keep_mask",
    "decoder_groups",
    "feature_drop",
    "feature_drop_keep",
    "feature_drop_mask",
    "feature_noise",
    "fold_runs",
    "foreground_mask",
    "get_perturbation",
    "guided_cutout",
    "l2_normalize",
    "object_masking",
    "register_perturbation",
    "registered_perturbations",
    "spatial_dropout",
    "spatial_dropout_mask",
    "unregister_perturbation",
    "vat_direction",
]
