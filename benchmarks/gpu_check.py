"""GPU check: one training step per shipped config at the config's real sizes, on random weights and inputs.

    python benchmarks/gpu_check.py > gpu.jsonl                # CUDA: every config, within 10 minutes on one GPU
    python benchmarks/gpu_check.py --table > gpu.jsonl         # ... and a markdown table on stderr (docs/gpu.md)
    python benchmarks/gpu_check.py --only cct/voc_1464 scl/mini_imagenet.yaml
    python benchmarks/gpu_check.py --cpu-smoke                # no GPU: every line skipped, one tiny step per method

Every shipped config of a real dataset (``configs/*/*.yaml`` except the embedded ``scenes`` and ``glyphs`` demos) is
built as ``fewlabels train`` builds it: the method from the config, its model with random weights (nothing is
downloaded and no dataset is read: what the model needs of the data comes from the dataset's registered metadata, a
roberta-base-sized model is written with random weights where a config names a Hugging Face directory, an SCL
teacher is a random network of the student's architecture), and random inputs of the config's batch and crop
sizes. A step is the engine's: the method's ``training_step`` under the config's autocast
(``train.mixed_precision``, ``auto`` = bf16 on CUDA), backward, gradient clipping, the config's optimizer, the
method's ``after_optimizer_step``. One JSON line per config on stdout:

- ``step_s``, ``peak_mb``: the median step time over ``--repeats`` timed steps after ``--warmup`` steps, and the peak
  of ``torch.cuda.max_memory_allocated`` in a step (weights, gradients, optimizer state, inputs, activations), in
  the engine's memory format (contiguous NCHW);
- ``channels_last_step_s``, ``channels_last_peak_mb`` (image methods): the same with the model and the images in
  channels_last (the engine does not convert them; this says whether it should);
- ``cct_k30_over_k1`` (CCT): the step at the config's K aux decoders over the step with one dropout decoder
  (``cct_step.k1_config``), the median of per-repeat ratios, steps interleaved (``cct_step.py``'s definition);
- ``ac_two_view_over_one_view`` (AC with orderings): ``ac_step.py``'s ratio (its ``view_steps``) on the config's
  network, batch and input size under the config's autocast;
- ``fewshot_eval_s`` (SCL): ``fewshot_evaluate`` with the config's test protocol (``eval``: episodes, ways, shots,
  queries, support_augment) on random images of the dataset's novel split size, up to ``--fewshot-images``; for a
  larger split ``fewshot_eval_full_s`` adds the feature extraction of the remaining images at the measured rate.
  Random images cost no decoding: the time is the model's and the classifiers'.

Configs that differ only in what does not change a step (names, seeds, label lists, schedules) are measured once;
``measured_as`` names the config that was. Once ``--max-seconds`` are spent the remaining configs are not measured
(``"skipped": "time budget ..."``). Without CUDA every line says ``"skipped": "needs CUDA"``; ``--cpu-smoke`` then
runs, for one config of each method (and each of AC's orderings/IIC and RelBitFit's model families), one step of
every code path at a tiny size on the CPU, and reports its losses under ``cpu_smoke`` (values, not timings).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the sibling benchmarks whose definitions this script reuses

from ac_step import view_steps  # noqa: E402
from cct_step import k1_config, rotated  # noqa: E402

from fewlabels.data.base import FewDataset  # noqa: E402
from fewlabels.engine.rng import seed_everything  # noqa: E402
from fewlabels.engine.trainer import _mixed_precision, build_optimizer  # noqa: E402
from fewlabels.methods.base import Method  # noqa: E402
from fewlabels.registry import config_from_dict, get_method  # noqa: E402

#: datasets generated or packaged with the project: their configs are CPU demos, not measured here
EMBEDDED = {"scenes", "glyphs", "digit-mosaics"}

#: few-shot datasets: (base classes, novel classes, novel images) of their standard splits
FEWSHOT_SPLITS: dict[str, tuple[int, int, int]] = {
    "mini-imagenet": (64, 20, 12_000),
    "tiered-imagenet": (351, 160, 206_209),
    "cifar-fs": (64, 20, 12_000),
    "fc100": (60, 20, 12_000),
}

#: roberta-base's architecture (its Hugging Face config.json), built with random weights for the GLUE configs
ROBERTA_BASE: dict[str, Any] = {
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
}
#: the same architecture at a tiny width and depth, for --cpu-smoke
TINY_ROBERTA = {**ROBERTA_BASE, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_ROBERTA["intermediate_size"] = 64

#: dotted config keys that do not change what a step computes: configs differing only in them are measured once
NOT_SIZES = {
    "name",
    "seed",
    "output_dir",
    "data.root",
    "data.labeled_list",
    "data.labeled",
    "data.n_train",
    "data.dev_size",
    "data.split",
    "data.eval_split",
    "data.train_split",
    "data.val_split",
    "data.scale",
    "train.epochs",
    "train.steps",
    "train.lr",
    "train.milestones",
    "train.gamma",
    "train.eval_every",
    "train.checkpoint_every",
    "train.warmup_ratio",
    "eval.val_episodes",
    "model.dropblock_ramp_steps",
    "distill.teacher",
}

#: the tiny sizes of --cpu-smoke, per method: dotted overrides of the config
TINY: dict[str, dict[str, Any]] = {
    "cct": {"data.crop_size": 32, "train.batch_size": 2, "unlabeled_batch_size": 2, "model.encoder": "resnet18"},
    "ac": {"data.input_size": 32, "train.batch_size": 2},
    "scl": {"data.image_size": 32, "train.batch_size": 4},
    "scl-distill": {"data.image_size": 32, "train.batch_size": 4},
    "relbitfit": {"data.max_length": 16, "train.batch_size": 2},
}
#: the few-shot protocol of --cpu-smoke (the config's support_augment, capped at 1)
TINY_FEWSHOT = {"episodes": 2, "shots": [1], "ways": 2, "queries": 1, "batch_size": 8}

#: the step index that methods see (``total_steps`` = 2 x this): past CCT's ramp-up, mid-schedule for the others
STEP_INDEX = 500


# --- configs ------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """One shipped config: its file, its YAML and what it is measured as."""

    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.relative_to(CONFIGS).as_posix()

    @property
    def method(self) -> str:
        return str(self.data["method"])

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def signature(self) -> str:
        """The config without :data:`NOT_SIZES` (a GLUE task as its label space): equal for configs of equal steps."""
        flat = {k: v for k, v in _flatten(self.data).items() if k not in NOT_SIZES}
        if "data.task" in flat:
            from fewlabels.data.glue import glue_task

            spec = glue_task(str(flat.pop("data.task")))
            flat["labels"] = [spec.num_labels, spec.is_regression]
        return json.dumps(flat, sort_keys=True)

    @property
    def family(self) -> str:
        """The code path a --cpu-smoke step of this config exercises."""
        if self.method == "ac":
            return "ac/iic" if self.get("model.mask_from") == "none" else "ac/orderings"
        if self.method == "relbitfit":
            return "relbitfit/hf-directory" if self.get("model.path") else "relbitfit/packaged"
        return self.method


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def real_configs(root: Path = CONFIGS) -> list[Plan]:
    """Every shipped config of a real dataset, in path order."""
    plans = [Plan(p, yaml.safe_load(p.read_text())) for p in sorted(root.glob("*/*.yaml"))]
    return [p for p in plans if p.get("data.dataset") not in EMBEDDED]


def describe(plan: Plan, device: torch.device) -> dict[str, Any]:
    """The fields of every line: the config, its batch and input sizes, the precision it trains in on CUDA."""
    config = config_from_dict(_loadable(plan.data, plan))
    method, batch = plan.method, config.train.batch_size
    if method == "cct":
        crop = config.data.crop_size
        batch = f"{batch}+{config.unlabeled_batch_size or batch}"
        inputs = f"3x{crop}x{crop}"
    elif method == "ac":
        size = config.data.input_size
        inputs = f"{config.data.spec.metadata.in_channels}x{size}x{size}"
    elif method in ("scl", "scl-distill"):
        size = config.data.resolved_image_size()
        inputs = f"{len(config.augment.views)}x3x{size}x{size}"
    else:
        inputs = f"{config.data.max_length} tokens"
    mixed = _mixed_precision(config.train, use_cuda=True)  # every figure is measured on CUDA
    return {"config": plan.name, "method": method, "device": str(device), "batch": batch, "input": inputs,
            "mixed_precision": mixed}  # fmt: skip


def _loadable(data: dict[str, Any], plan: Plan, model_dir: Path | None = None) -> dict[str, Any]:
    """The YAML with what validation asks for that this check does not read: a data root, a model directory."""
    data = json.loads(json.dumps(data))
    if plan.method in ("cct", "ac") and not plan.get("data.root"):
        _set(data, "data.root", "/gpu-check/no-data")
    if plan.method == "relbitfit" and plan.get("model.path"):
        _set(data, "model.path", str(model_dir or "/gpu-check/no-model"))
    return data


# --- building a step without data ---------------------------------------------------------------------------------
def write_random_roberta(out: Path, tiny: bool) -> Path:
    """A Hugging Face directory holding a roberta-base-sized (or tiny) RoBERTa with random weights and no pooler,
    as the roberta-base checkpoint (a masked-LM one) has none: the classification head is initialised on loading."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig(**(TINY_ROBERTA if tiny else ROBERTA_BASE)), add_pooling_layer=False)
    model.save_pretrained(str(out))
    return out


def without_data(method: Method[Any], config: Any) -> None:
    """Let ``method`` build its model and run its step without reading its dataset: the classes, channels and
    ignore index it would read come from the dataset's registered metadata and :data:`FEWSHOT_SPLITS`."""
    name = config.method
    if name == "cct":
        from fewlabels.methods.segmentation.method import label_space_without_data

        labels = label_space_without_data(config.data, None)
        assert labels is not None, f"{config.data.dataset}: no registered classes"
        method.restored_labels = labels  # type: ignore[attr-defined]
        method.__dict__["data"] = SimpleNamespace(ignore_index=labels.ignore_index)
    elif name == "ac":
        from fewlabels.data.common import IGNORE_INDEX

        meta = config.data.spec.metadata
        ignore = IGNORE_INDEX if meta.ignore_index is None else meta.ignore_index
        method.__dict__["data"] = SimpleNamespace(
            ignore_index=ignore, train=range(10**6), num_classes=meta.num_classes, in_channels=meta.in_channels
        )
    elif name in ("scl", "scl-distill"):
        method.num_base_classes = FEWSHOT_SPLITS[config.data.spec.name][0]  # type: ignore[attr-defined]
    elif name == "relbitfit":
        from fewlabels.methods.relbitfit.data import TaskData

        if config.data.dataset == "glue":
            from fewlabels.data.glue import glue_task

            spec = glue_task(config.data.task)
            method._task = TaskData([], {}, spec.num_labels, spec.is_regression, spec.name, spec.labels)  # type: ignore[attr-defined]
        else:
            method._task = TaskData([], {}, 2, False, None)  # type: ignore[attr-defined]
    else:
        raise ValueError(f"gpu_check has no data-free build for method {name!r}")


def random_batch(method: Method[Any], config: Any, model: torch.nn.Module, g: torch.Generator) -> dict[str, Any]:
    """A batch of the method's training sources at the config's sizes, random values (CPU tensors)."""
    name, bs = config.method, config.train.batch_size
    if name == "cct":
        size, labels = config.data.crop_size, method.label_space  # type: ignore[attr-defined]
        ubs = config.unlabeled_batch_size or bs
        mask = torch.randint(0, labels.num_classes, (bs, size, size), generator=g)
        mask[:, : size // 8] = labels.ignore_index  # a band of unlabelled pixels, as crops padded past the image
        return {
            "labeled": {"image": torch.rand(bs, 3, size, size, generator=g), "mask": mask},
            "unlabeled": {"image": torch.rand(ubs, 3, size, size, generator=g)},
        }
    if name == "ac":
        size, data = config.data.input_size, method.data  # type: ignore[attr-defined]
        images: dict[str, torch.Tensor] = {"image": torch.rand(bs, data.in_channels, size, size, generator=g)}
        if config.views.jitter > 0 or config.views.flip:  # TwoViewDataset's two augmented views
            images["image2"] = torch.rand(bs, data.in_channels, size, size, generator=g)
            images["flipped"] = torch.rand(bs, generator=g) < 0.5
        if config.loss.ignore_unlabelled:
            mask = torch.randint(0, max(data.num_classes, 1), (bs, size, size), generator=g)
            mask[:, : size // 8] = data.ignore_index
            images["mask"] = mask
        return {"images": images}
    if name in ("scl", "scl-distill"):
        size = config.data.resolved_image_size()
        classes = torch.arange(bs) % max(2, bs // 4)  # several images of each class: the contrastive positives
        return {"base": {"image": torch.rand(bs, 3, size, size, generator=g), "label": classes}}
    if name == "relbitfit":
        length, hf = config.data.max_length, model.config  # type: ignore[union-attr]
        ids = torch.randint(5, hf.vocab_size, (bs, length), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones(bs, length, dtype=torch.long)}
        if hf.model_type == "bert":
            batch["token_type_ids"] = torch.zeros(bs, length, dtype=torch.long)
        task = method._task  # type: ignore[attr-defined]
        if task.regression:
            batch["labels"] = torch.rand(bs, generator=g) * 5
        else:
            batch["labels"] = torch.randint(0, task.num_labels, (bs,), generator=g)
        return {"text": batch}
    raise ValueError(f"gpu_check has no batch for method {name!r}")


def _to(value: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(value, dict):
        return {k: _to(v, device, channels_last) for k, v in value.items()}
    value = value.to(device)
    if channels_last and value.ndim == 4 and value.is_floating_point():
        value = value.contiguous(memory_format=torch.channels_last)
    return value


@dataclass
class Trainee:
    """A method, its model, optimizer and one batch on the device: :meth:`step` is one engine training step."""

    method: Method[Any]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: dict[str, Any]
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    scaler: torch.amp.GradScaler | None
    max_grad_norm: float
    base_bytes: int
    steps: int = 0

    def step(self) -> torch.Tensor:
        with self.autocast():
            loss = self.method.training_step(self.model, self.batch, STEP_INDEX + self.steps, 2 * STEP_INDEX).loss
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.max_grad_norm > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step(self.model, STEP_INDEX + self.steps)
        self.steps += 1
        return loss.detach()


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its 4-D weights and buffers in channels_last (``Module.to(memory_format=...)`` refuses the
    5-D buffers of AC's masked layers)."""
    return model._apply(lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)


def prepare(config: Any, device: torch.device, channels_last: bool = False) -> Trainee:
    """The method of ``config`` with its model, optimizer and a random batch on ``device``, as the engine sets up a
    single-process run (same seed, same optimizer and parameter groups, same autocast)."""
    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated(device) if cuda else 0
    method = get_method(config.method)(config)
    without_data(method, config)
    seed_everything(config.seed)
    model = method.build_model()
    if config.method == "scl-distill":  # a random teacher of the student's architecture, instead of a run's
        from fewlabels.methods.scl.method import build_net

        model.attach_teacher(build_net(config, method.num_base_classes))  # type: ignore[attr-defined, operator]
    model = model.to(device)
    if channels_last:
        model = to_channels_last(model)
    model.train()
    optimizer = build_optimizer(config.train, method.param_groups(model))
    batch = _to(random_batch(method, config, model, torch.Generator().manual_seed(config.seed)), device, channels_last)
    precision = _mixed_precision(config.train, cuda)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    return Trainee(method, model, optimizer, batch, autocast, scaler, config.train.max_grad_norm, base)


# --- measuring ----------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], torch.Tensor]], device: torch.device, repeats: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of each function per repeat, the functions run in a rotated order every repeat (``cct_step.py``),
    and the loss each returned last."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    last: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        for k in rotated(list(fns), r):  # type: ignore[arg-type]
            _sync(device)
            t0 = time.perf_counter()
            last[k] = fns[k]()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times, {k: float(v) for k, v in last.items()}


def peak_mb(trainee: Trainee, device: torch.device) -> float:
    """Peak memory of one step beyond what was allocated before ``trainee`` was built (its weights, gradients,
    optimizer state and batch included)."""
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    trainee.step()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - trainee.base_bytes) / 2**20


def median_ratio(a: list[float], b: list[float]) -> float:
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 4)


class RandomImages(FewDataset):
    """``n`` random images ``[3, size, size]`` in [0, 1] of ``classes`` equally frequent classes: a novel split's
    shape without its files (each image drawn from its index, so every pass sees the same images)."""

    def __init__(self, n: int, classes: int, size: int) -> None:
        self.n, self.size = n, size
        self.labels = np.arange(n, dtype=np.int64) % classes
        self.num_classes = classes
        self.class_names = [str(c) for c in range(classes)]

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        image = torch.rand(3, self.size, self.size, generator=torch.Generator().manual_seed(index))
        return {"image": image, "label": torch.tensor(self.labels[index]), "index": index}


def fewshot_eval(config: Any, model: torch.nn.Module, device: torch.device, cap: int, tiny: bool) -> dict[str, Any]:
    """Seconds of the config's episodic test protocol on a random split of the novel split's size, up to ``cap``
    images; a larger split adds the feature extraction of the rest at the rate measured on ``cap`` images. With
    ``tiny`` the protocol of :data:`TINY_FEWSHOT` on a split of twice ``cap`` images (the extrapolation runs too)."""
    from fewlabels.methods.scl.fewshot_eval import extract_features, fewshot_evaluate

    _, classes, images = FEWSHOT_SPLITS[config.data.spec.name]
    protocol = config.eval
    if tiny:
        protocol = dataclasses.replace(protocol, **TINY_FEWSHOT, support_augment=min(protocol.support_augment, 1))
        classes, cap = protocol.ways, protocol.ways * (max(protocol.shots) + protocol.queries)
        images = 2 * cap
    n = min(images, cap)
    split = RandomImages(n, classes, config.data.resolved_image_size())
    result = fewshot_evaluate(model, split, protocol, device=device, label="gpu-check fewshot")
    out: dict[str, Any] = {
        "fewshot_eval_s": round(result["seconds"], 3),
        "fewshot_eval_images": n,
        "fewshot_split_images": images,
        "fewshot_protocol": {k: result[k] for k in ("episodes", "ways", "queries", "support_augment")},
        **{f"fewshot_acc_{k}shot": round(float(result[f"acc_{k}shot"]), 2) for k in protocol.shots},
    }
    if n < images:
        t0 = time.perf_counter()
        extract_features(model, split, device, protocol.batch_size, protocol.support_augment, seed=protocol.seed)
        per_image = (time.perf_counter() - t0) / n
        out["fewshot_eval_full_s"] = round(result["seconds"] + per_image * (images - n), 1)
    return out


def _after_zero_grad(model: torch.nn.Module, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn`` (forward + backward only) on cleared gradients, cleared again after it: the training steps that run
    interleaved with it on the same model start from no gradient, as always."""

    def run() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = fn()
        model.zero_grad(set_to_none=True)
        return loss

    return run


def measure(
    config: Any,
    device: torch.device,
    warmup: int,
    repeats: int,
    fewshot_images: int,
    tiny: bool = False,
    evaluated: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The figures of one config (see the module docstring; the peak memory on CUDA only), and the last loss of
    every timed function: ``step``, ``k1`` (CCT), ``one_view`` and ``two_view`` (AC), ``channels_last``.
    ``evaluated`` keeps the few-shot figures of each backbone, input size, dataset and protocol (an scl run and
    its scl-distill student are evaluated alike)."""
    cuda = device.type == "cuda"
    out: dict[str, Any] = {}
    live: list[Trainee] = []
    try:
        main = prepare(config, device)
        live.append(main)
        fns: dict[str, Callable[[], torch.Tensor]] = {"step": main.step}
        if cuda:
            for _ in range(warmup):
                main.step()
            out["peak_mb"] = round(peak_mb(main, device), 1)
        if config.method == "cct":
            k1 = prepare(dataclasses.replace(config, perturbations=k1_config()), device)
            live.append(k1)
            fns["k1"] = k1.step
        if config.method == "ac" and config.model.mask_from != "none":
            images = main.batch["images"]["image"]
            views = view_steps(main.model, images, config.loss.displacement, config.loss.collapsed, main.autocast)
            fns.update({name: _after_zero_grad(main.model, fn) for name, fn in views.items()})
        if config.method != "relbitfit":
            cl = prepare(config, device, channels_last=True)
            live.append(cl)
            if cuda:
                for _ in range(warmup):
                    cl.step()
                out["channels_last_peak_mb"] = round(peak_mb(cl, device), 1)
            fns["channels_last"] = cl.step
        for name, fn in fns.items():  # warm-up of what was not warmed above
            if name not in ("step", "channels_last") or not cuda:
                for _ in range(warmup):
                    fn()
        times, losses = interleaved(fns, device, repeats)
        out["step_s"] = round(statistics.median(times["step"]), 4)
        if "channels_last" in times:
            out["channels_last_step_s"] = round(statistics.median(times["channels_last"]), 4)
        if "k1" in times:
            out["cct_k30_over_k1"] = median_ratio(times["step"], times["k1"])
            out["cct_k"] = config.perturbations.total
        if "two_view" in times:
            out["ac_two_view_over_one_view"] = median_ratio(times["two_view"], times["one_view"])
        if config.method in ("scl", "scl-distill"):
            protocol = {k: v for k, v in dataclasses.asdict(config.eval).items() if k != "val_episodes"}
            key = json.dumps([config.model.backbone, config.data.resolved_image_size(), config.data.dataset, protocol])
            cache = {} if evaluated is None else evaluated
            if key not in cache:
                cache[key] = fewshot_eval(config, main.model, device, fewshot_images, tiny)
            out.update(cache[key])
    finally:
        live.clear()
    return out, losses


def smoke(plan: Plan, model_dir: Path | None) -> dict[str, Any]:
    """:func:`measure` of ``plan`` at the tiny sizes of :data:`TINY` on the CPU, one repeat: every code path of the
    CUDA measurement but the memory peaks runs. Its timings mean nothing here; the losses and accuracies are
    reported."""
    data = _loadable(plan.data, plan, model_dir)
    for key, value in TINY[plan.method].items():
        _set(data, key, value)
    figures, losses = measure(
        config_from_dict(data), torch.device("cpu"), warmup=0, repeats=1, fewshot_images=0, tiny=True
    )
    accuracies = {k: v for k, v in figures.items() if k.startswith("fewshot_acc")}
    return {"sizes": TINY[plan.method], "losses": losses, **accuracies}


# --- the run ------------------------------------------------------------------------------------------------------
@dataclass
class Report:
    """The lines written so far (for the table)."""

    lines: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        print(json.dumps(line), flush=True)

    def table(self) -> str:
        """A markdown table of the lines: one row per config, "-" where a figure does not apply."""
        columns = [  # (heading, key, scale, digits)
            ("step (s)", "step_s", 1.0, 3),
            ("peak (GB)", "peak_mb", 1 / 1024, 2),
            ("channels_last step (s)", "channels_last_step_s", 1.0, 3),
            ("channels_last peak (GB)", "channels_last_peak_mb", 1 / 1024, 2),
            ("CCT K30/K1", "cct_k30_over_k1", 1.0, 2),
            ("AC 2 views/1", "ac_two_view_over_one_view", 1.0, 2),
            ("few-shot eval (s)", "fewshot_eval_full_s", 1.0, 1),
        ]
        head = ["config", "batch", "input", "AMP", *(c[0] for c in columns)]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for line in self.lines:
            cells = [line["config"], str(line["batch"]), line["input"], line["mixed_precision"]]
            if "skipped" in line or "error" in line:
                reason = f"skipped: {line['skipped']}" if "skipped" in line else f"error: {line['error']}"
                rows.append("| " + " | ".join([*cells, reason, *[""] * (len(columns) - 1)]) + " |")
                continue
            for _, key, scale, digits in columns:
                if key == "fewshot_eval_full_s" and key not in line:
                    key = "fewshot_eval_s"  # the whole split was evaluated
                value = line.get(key)
                cells.append("-" if value is None else f"{value * scale:.{digits}f}")
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", default=[], help="configs whose path (e.g. cct/voc_1464) contains one")
    parser.add_argument("--max-seconds", type=float, default=540, help="stop measuring new configs after this")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps of each kind")
    parser.add_argument("--fewshot-images", type=int, default=12_000, help="largest random novel split evaluated")
    parser.add_argument("--cpu-smoke", action="store_true", help="without CUDA: one tiny step per method")
    parser.add_argument("--table", action="store_true", help="a markdown table of the lines on stderr at the end")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible")
    plans = [p for p in real_configs() if not args.only or any(s in p.name for s in args.only)]
    if not plans:
        parser.error(f"--only {' '.join(args.only)} matches no config")
    report = Report()
    start = time.perf_counter()
    measured: dict[str, tuple[str, dict[str, Any]]] = {}
    evaluated: dict[str, dict[str, Any]] = {}
    smoked: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        model_dirs: dict[bool, Path] = {}

        def model_dir(plan: Plan, tiny: bool) -> Path | None:
            if plan.method != "relbitfit" or not plan.get("model.path"):
                return None
            if tiny not in model_dirs:
                model_dirs[tiny] = write_random_roberta(Path(tmp) / ("tiny" if tiny else "base"), tiny)
            return model_dirs[tiny]

        for plan in plans:
            line = describe(plan, device)
            if device.type != "cuda":
                line["skipped"] = "needs CUDA"
                if args.cpu_smoke and plan.family not in smoked:
                    smoked.add(plan.family)
                    line["cpu_smoke"] = smoke(plan, model_dir(plan, tiny=True))
            elif plan.signature in measured:
                first, values = measured[plan.signature]
                line.update(values, measured_as=first)
            elif time.perf_counter() - start > args.max_seconds:
                line["skipped"] = f"time budget (--max-seconds {args.max_seconds:g}) spent"
            else:
                try:
                    config = config_from_dict(_loadable(plan.data, plan, model_dir(plan, tiny=False)))
                    values, _ = measure(
                        config, device, args.warmup, args.repeats, args.fewshot_images, evaluated=evaluated
                    )
                except Exception as e:  # noqa: BLE001 - one config's failure (out of memory, ...) is its line's
                    values = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
                gc.collect()  # the config's models, optimizers and batches
                torch.cuda.empty_cache()
                measured[plan.signature] = (plan.name, values)
                line.update(values, measured_as=plan.name)
            report.emit(line)
    spent = time.perf_counter() - start
    if device.type == "cuda":
        print(f"gpu_check: {len(measured)} distinct configs measured in {spent:.0f} s", file=sys.stderr)
    else:
        smoked_note = f"; --cpu-smoke ran {len(smoked)} tiny steps in {spent:.0f} s" if args.cpu_smoke else ""
        print(f"gpu_check: no CUDA device, nothing measured{smoked_note}", file=sys.stderr)
    if args.table:
        print(report.table(), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
