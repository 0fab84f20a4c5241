"""How the registered types share the K stacked aux decoders, and how the fused path groups them into runs.

Both the fused path (:meth:`~fewlabels.methods.cct.model.CCTModel.classifier_outputs`) and the reference path
(:meth:`~fewlabels.methods.cct.model.CCTModel.perturbed_features`) iterate the registry through
:func:`decoder_groups`; the fused path then computes each run of :func:`fold_runs` in one product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fewlabels.methods.cct.perturbations.base import Perturbation, PerturbationsConfig, registered_perturbations

__all__ = ["DecoderGroup", "decoder_groups", "fold_runs"]


@dataclass(frozen=True)
class DecoderGroup:
    """The aux decoders of one perturbation type: ``perturbation`` is applied by the decoders ``decoders`` of the K."""

    perturbation: Perturbation
    decoders: slice

    @property
    def count(self) -> int:
        """The number of decoders in the group."""
        return int(self.decoders.stop - self.decoders.start)


def decoder_groups(config: PerturbationsConfig) -> list[DecoderGroup]:
    """Every registered type with its consecutive slice of the stacked aux decoders, in the registry's order.

    A type whose count is 0 gets an empty slice.
    """
    groups: list[DecoderGroup] = []
    start = 0
    for perturbation in registered_perturbations():
        stop = start + perturbation.count(config)
        groups.append(DecoderGroup(perturbation, slice(start, stop)))
        start = stop
    return groups


def fold_runs(groups: Sequence[DecoderGroup]) -> list[tuple[DecoderGroup, ...]]:
    """The groups that have decoders, in order, cut into the runs that the fused path computes together.

    Consecutive mask-foldable groups of the same kind form one run, computed as one product over the decoders of the
    run; every apply-to-copies group is a run of its own. The runs are consecutive in the decoder order, so the
    classifier outputs of all runs, concatenated, are in the registry's order.
    """
    runs: list[list[DecoderGroup]] = []
    for group in groups:
        if group.count == 0:
            continue
        fold = group.perturbation.fold
        if runs and fold != "copies" and runs[-1][-1].perturbation.fold == fold:
            runs[-1].append(group)
        else:
            runs.append([group])
    return [tuple(run) for run in runs]
