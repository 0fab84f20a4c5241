"""Load ImageNet-pretrained backbone weights from a local torchvision-, timm- or PSPNet/CCT-style file.

Nothing is downloaded: a missing file is an error that says which file to fetch and how to pass it.

Accepted files: a state dict saved with ``torch.save`` (``.pth``/``.pt``/``.bin``/``.tar``, read with
``torch.load(weights_only=True)``; a checkpoint whose tensors sit under ``"state_dict"``, ``"model"`` or
``"model_state"`` is unwrapped) or a ``.safetensors`` file. Before matching, keys are normalised:

- the prefixes ``module.`` (DataParallel/DDP), ``backbone.``, ``encoder.``, ``model.`` and ``prefix.`` are
  stripped (repeatedly, so ``module.backbone.layer1...`` works);
- classifier keys (``fc.``, timm's ``head.``/``classifier.``) are dropped;
- for a deep-stem encoder, the PSPNet/CCT "deep base" stem names (``conv1``, ``bn1``, ``conv2``, ``bn2``,
  ``conv3``, ``bn3`` at the top level, as in CCT's ``3x3resnet50-imagenet.pth`` and semseg's ``resnet50_v2.pth``) are
  mapped to this library's timm-style layout (``conv1.0``, ``conv1.1``, ``conv1.3``, ``conv1.4``, ``conv1.6``, ``bn1``).
  timm's own deep-stem ResNets (``resnet50d``) use the same layout with a narrower stem (32-32-64 instead of 64-64-128),
  so they fail with a shape-mismatch error rather than loading wrongly.

BatchNorm ``num_batches_tracked`` buffers are never required (older torchvision files do not have them).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

STRIPPED_PREFIXES: tuple[str, ...] = ("module.", "backbone.", "encoder.", "model.", "prefix.")
CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.", "head.", "classifier.")

# PSPNet/CCT deep-base stem (top-level conv1..3/bn1..3) -> timm-style Sequential stem used here.
_DEEP_STEM_MAP: dict[str, str] = {
    "conv1.": "conv1.0.",
    "bn1.": "conv1.1.",
    "conv2.": "conv1.3.",
    "bn2.": "conv1.4.",
    "conv3.": "conv1.6.",
    "bn3.": "bn1.",
}

# Where each architecture's ImageNet weights come from (file names as published by torchvision).
WEIGHT_HINTS: dict[str, str] = {
    "resnet18": "torchvision resnet18-f37072fd.pth",
    "resnet34": "torchvision resnet34-b627a593.pth",
    "resnet50": "torchvision resnet50-0676ba61.pth (or the V2 weights resnet50-11ad3fa6.pth)",
    "resnet101": "torchvision resnet101-63fe2227.pth (or the V2 weights resnet101-cd907fc2.pth)",
    "resnet50-deep": "CCT's 3x3resnet50-imagenet.pth (github.com/yassouali/CCT releases v0.1) or semseg's "
    "resnet50_v2.pth",
    "resnet101-deep": "semseg's resnet101_v2.pth (github.com/hszhao/semseg)",
}


class PretrainedWeightsError(ValueError):
    """The file's tensors do not fit the module (missing/unexpected keys or a shape mismatch)."""


def _weights_hint(module: nn.Module) -> str:
    arch = getattr(module, "arch", None)
    if arch is None:
        return "a torchvision/timm-style state dict for this backbone"
    key = f"{arch}-deep" if getattr(module, "deep_stem", False) else arch
    return f"{arch} ImageNet weights ({WEIGHT_HINTS.get(key, 'a torchvision/timm-style state dict')})"


def _missing_weights_message(path: Path, module: nn.Module) -> str:
    """What to do when ``model.pretrained`` names no file: the weights to get, or the file inside a run folder."""
    arch = getattr(module, "arch", None)
    if path.is_dir():
        # A run folder (or the output_dir above it) was given: name the weights file(s) it holds. Only those two
        # depths are looked at, so that a wrong path such as / or a dataset root is not searched recursively.
        candidates = [path / "model.safetensors", *sorted(path.glob("*/model.safetensors"))]
        found = [str(p) for p in candidates if p.is_file()][:3]
        where = f" It holds {', '.join(found)}." if found else ""
        return (
            f"pretrained weights path {path} is a folder; point model.pretrained at a weights file "
            f"(a run's model.safetensors or a .pth state dict).{where}"
        )
    if arch is not None and arch not in WEIGHT_HINTS:
        # No published ImageNet weights exist for this encoder: its only warm start is one trained here.
        return (
            f"pretrained weights file not found: {path}. {arch} has no published ImageNet weights: train them "
            "from your images with `fewlabels train configs/seg-pretrain/scenes.yaml data.dataset=... "
            "data.root=...` and pass the run's model.safetensors as model.pretrained=PATH, or set pretrained to "
            "null to train from scratch."
        )
    return (
        f"pretrained weights file not found: {path}. Download {_weights_hint(module)}, put it at {path} "
        "(or anywhere) and pass its path as pretrained=PATH (config: model.pretrained=PATH), "
        "or set pretrained to null to train from scratch."
    )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``), unwrapped.

    Raises:
        FileNotFoundError: the file does not exist.
        PretrainedWeightsError: the file holds no mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        with warnings.catch_warnings():
            # torch warns about any pickle protocol above 2 (what torch.save writes is 2); a user would see it
            # above the one error line of an unreadable file, and it says nothing about a readable one.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - garbage, truncated or foreign files fail in many ways (unpickling, zip, header)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) and reason.startswith("Weights only load failed"):
            # torch's advice (load with weights_only=False) would run arbitrary code from the file: not ours to give.
            reason = "torch.load(weights_only=True) refused it: not a plain state dict of tensors"
        raise PretrainedWeightsError(
            f"{path} is not a readable weights file ({reason[:200]}); it must be a torch.save state dict (.pth/.pt) "
            "or a .safetensors file"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def normalize_keys(state: Mapping[str, Tensor], deep_stem: bool = False) -> tuple[dict[str, Tensor], list[str]]:
    """Strip wrapper prefixes, drop classifier keys and (``deep_stem=True``) map PSPNet/CCT stem names.

    Returns:
        ``(normalised state dict, dropped classifier keys)``.
    """
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    # The deep-base naming is recognised by a top-level conv2/conv3 (torchvision has none outside layers).
    pspnet_stem = deep_stem and any(_strip(k).startswith(("conv2.", "conv3.", "bn3.")) for k in state)
    for key, value in state.items():
        name = _strip(key)
        if name.startswith(CLASSIFIER_PREFIXES):
            dropped.append(key)
            continue
        if pspnet_stem:
            for old, new in _DEEP_STEM_MAP.items():
                if name.startswith(old):
                    name = new + name[len(old) :]
                    break
        out[name] = value
    return out, dropped


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def load_backbone_weights(module: nn.Module, path: str | Path, strict_backbone: bool = True) -> dict[str, list[str]]:
    """Copy pretrained weights from a local file into ``module`` (an encoder from ``build_encoder``).

    Args:
        module: the backbone; its ``arch``/``deep_stem`` attributes (when present) pick the download hint
            and the PSPNet/CCT stem mapping.
        path: ``.pth``/``.pt`` (torch.save) or ``.safetensors`` file.
        strict_backbone: when True, every parameter/buffer of ``module`` must be in the file (except BN
            ``num_batches_tracked``) and the file may hold nothing else besides the dropped classifier.

    Returns:
        ``{"loaded": [...], "missing": [...], "unexpected": [...], "dropped": [...]}``: the names (after
        normalisation) copied, absent from the file, present in the file but not in the module, and the
        classifier keys dropped.

    Raises:
        FileNotFoundError: ``path`` does not exist; the message names the weights to download.
        PretrainedWeightsError: a shape mismatch (naming the key and both shapes), or, with
            ``strict_backbone``, missing or unexpected keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(_missing_weights_message(path, module))
    state, dropped = normalize_keys(read_state_dict(path), deep_stem=bool(getattr(module, "deep_stem", False)))
    own = module.state_dict()
    for name, tensor in state.items():
        if name in own and own[name].shape != tensor.shape:
            raise PretrainedWeightsError(
                f"shape mismatch for {name!r}: file {path.name} has {tuple(tensor.shape)}, "
                f"the model expects {tuple(own[name].shape)} (wrong architecture, stem or in_channels?)"
            )
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if strict_backbone and (missing or unexpected):
        raise PretrainedWeightsError(
            f"{path.name} does not match the backbone {getattr(module, 'arch', type(module).__name__)}: "
            f"{len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}. "
            f"Expected {_weights_hint(module)}: point model.pretrained at that file, or set it to null to train "
            "from scratch."
        )
    loadable = {k: v for k, v in state.items() if k in own}
    module.load_state_dict(loadable, strict=False)
    return {"loaded": sorted(loadable), "missing": missing, "unexpected": unexpected, "dropped": dropped}
