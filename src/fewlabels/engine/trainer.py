"""The training loop every method runs through.

Hugging Face Accelerate does the plumbing (device placement, DDP under ``torchrun``/``accelerate launch``, mixed
precision, gradient synchronisation); this module adds the run directory, exact resume, checkpoints, evaluation,
best-checkpoint selection, logging and the NaN guard.

Order inside optimizer step ``t`` (0-based, ``t + 1`` steps done afterwards): ``grad_accum`` micro-batches forward and
backward, clip, optimizer and scheduler step, then — at their intervals — NaN check + log, evaluation, checkpoint.
Evaluation runs inside a forked RNG so that it never changes the training trajectory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import broadcast_object_list, gather_object

from fewlabels.config import ConfigError, RunConfig, TrainConfig, write_yaml
from fewlabels.engine.allocator import keep_freed_memory
from fewlabels.engine.checkpoint import (
    CheckpointError,
    latest_valid_checkpoint,
    list_checkpoints,
    save_checkpoint,
    save_weights,
)
from fewlabels.engine.data import step_loader
from fewlabels.engine.distributed import convert_batchnorm
from fewlabels.engine.monitor import Monitor, truncate_metrics
from fewlabels.engine.rng import capture_rng_state, restore_rng_state, seed_everything
from fewlabels.methods.base import Method, Source
from fewlabels.registry import get_method

log = logging.getLogger("fewlabels")

#: keys that may change when resuming without breaking the trajectory up to the resume point
RESUMABLE_OVERRIDES = (
    "train.steps",
    "train.epochs",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.num_workers",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    metrics: dict[str, float]
    best: dict[str, float] | None


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps (warm-up then the schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = min(step, total) / max(total, 1)
    if cfg.scheduler == "poly":
        return (1.0 - t) ** cfg.poly_power
    if cfg.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.scheduler == "step":
        return cfg.gamma ** sum(t >= m for m in cfg.milestones)
    return 1.0


def build_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    param_groups = []
    for g in groups:
        g = dict(g)
        g["lr"] = cfg.lr * g.pop("lr_scale", 1.0)
        if not g["params"]:
            continue
        param_groups.append(g)
    if not param_groups:
        raise ConfigError("method", "the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return opt_cls(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def total_steps(cfg: TrainConfig, sources: dict[str, Source]) -> int:
    if cfg.epochs > 0:
        per_epoch = max(len(s.dataset) // s.batch_size for s in sources.values())
        return max(1, math.ceil(cfg.epochs * per_epoch))
    return cfg.steps


def _mixed_precision(cfg: TrainConfig, use_cuda: bool) -> str:
    if cfg.mixed_precision == "auto":
        return "bf16" if use_cuda else "no"
    if cfg.mixed_precision != "no" and not use_cuda:
        log.warning("train.mixed_precision=%s needs a GPU; training in float32 on CPU", cfg.mixed_precision)
        return "no"
    return cfg.mixed_precision


def _default_name(method: str) -> str:
    return f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    """Runs one training run of ``config``; ``resume_dir`` continues an existing run exactly."""

    def __init__(self, config: RunConfig, resume_dir: str | Path | None = None) -> None:
        self.config = config
        self.cfg = config.train
        use_cuda = self.cfg.device != "cpu" and torch.cuda.is_available()
        if self.cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device", "cuda requested but no GPU is visible")
        if not use_cuda:
            keep_freed_memory()  # reuse freed activation memory instead of page-faulting it in every step
        self.accelerator = Accelerator(
            cpu=not use_cuda,
            mixed_precision=_mixed_precision(self.cfg, use_cuda),
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=get_method(config.method).find_unused_parameters)
            ],
        )
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.resume_dir = resume_dir
        self.run_dir = Path(resume_dir) if resume_dir is not None else Path(config.output_dir) / (config.name or "")
        if resume_dir is None and config.name and any((self.run_dir / "checkpoints").glob("step_*.pt")):
            raise ConfigError(
                "name",
                f"run directory {self.run_dir} already holds a run; resume it with --resume {self.run_dir} "
                "or choose another name",
            )

    # ------------------------------------------------------------------------------------------------------------
    def _prepare_run_dir(self, resume_dir: str | Path | None) -> Path:
        if resume_dir is not None:
            run_dir = Path(resume_dir)
        else:
            name = self.config.name or _default_name(self.config.method)
            names = broadcast_object_list([name]) if self.world > 1 else [name]
            run_dir = Path(self.config.output_dir) / names[0]
            if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
                raise ConfigError(
                    "name",
                    f"run directory {run_dir} already holds a run; resume it with --resume {run_dir} "
                    "or choose another name",
                )
        if self.is_main:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_yaml(self.config, run_dir / "config.yaml")
        self.accelerator.wait_for_everyone()
        return run_dir

    def _check_batches(self, sources: dict[str, Source]) -> None:
        div = self.world * self.cfg.grad_accum
        for name, src in sources.items():
            if src.batch_size % div:
                raise ConfigError(
                    "train.batch_size",
                    f"source '{name}' has a global batch of {src.batch_size}, which must be divisible by "
                    f"processes x grad_accum = {self.world} x {self.cfg.grad_accum}",
                )
            if len(src.dataset) < src.batch_size // self.cfg.grad_accum:
                raise ConfigError(
                    "train.batch_size",
                    f"source '{name}' has {len(src.dataset)} examples, fewer than one batch "
                    f"({src.batch_size // self.cfg.grad_accum})",
                )

    def _state(self, model, optimizer, scheduler, step: int) -> dict[str, Any]:
        rng = capture_rng_state()
        all_rng = gather_object([rng]) if self.world > 1 else [rng]
        return {
            "format": 1,
            "method": self.config.method,
            "step": step,
            "world_size": self.world,
            "model": self.accelerator.unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": all_rng,
        }

    # ------------------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        acc, cfg = self.accelerator, self.cfg
        method: Method = get_method(self.config.method)(self.config)
        seed_everything(self.config.seed)  # identical initial weights on every rank
        model = method.build_model()
        if self.world > 1:
            model = convert_batchnorm(model, acc.device.type)
        sources = method.train_sources()
        self._check_batches(sources)
        # The run directory is created only once the data and model are known to be usable.
        self.run_dir = self._prepare_run_dir(self.resume_dir)
        steps = total_steps(cfg, sources)
        optimizer = build_optimizer(cfg, method.param_groups(model))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps))
        model, optimizer = acc.prepare(model, optimizer)

        start = 0
        found = latest_valid_checkpoint(self.run_dir / "checkpoints")
        existing = list_checkpoints(self.run_dir / "checkpoints")
        if found is None and existing:
            raise CheckpointError(
                f"none of the {len(existing)} checkpoints in {self.run_dir / 'checkpoints'} can be read (all corrupt "
                "or incomplete); move them away to restart this run from scratch"
            )
        if found is not None:
            path, state = found
            if state["method"] != self.config.method:
                raise CheckpointError(f"{path} belongs to method {state['method']!r}, not {self.config.method!r}")
            acc.unwrap_model(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state["world_size"] == self.world:
                restore_rng_state(state["rng"][self.rank])
            else:
                log.warning(
                    "resuming with %d processes instead of %d: random streams differ",
                    self.world,
                    state["world_size"],
                )
                restore_rng_state(state["rng"][0])
            start = int(state["step"])
            if self.is_main:
                log.info("resumed %s at step %d", path, start)
        else:
            seed_everything(self.config.seed + 1000 * self.rank)
        if self.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", start)

        iters = {
            name: iter(
                step_loader(
                    src.dataset,
                    src.batch_size // cfg.grad_accum,
                    self.config.seed,
                    i,
                    self.rank,
                    self.world,
                    start * cfg.grad_accum,
                    cfg.num_workers,
                )
            )
            for i, (name, src) in enumerate(sources.items())
        }
        samples_per_step = sum(s.batch_size for s in sources.values())
        monitor = Monitor(self.run_dir, steps, start, active=self.is_main)
        best = self._read_best()
        last_metrics: dict[str, float] = {}
        device = acc.device
        nan_step = torch.full((), -1, dtype=torch.long, device=device)
        loss_sum = torch.zeros((), device=device)
        logs_sum: dict[str, torch.Tensor] = {}
        window, t_window = 0, time.perf_counter()
        model.train()
        try:
            for step in range(start, steps):
                for a in range(cfg.grad_accum):
                    batch = {name: _to_device(next(it), device) for name, it in iters.items()}
                    sync = a == cfg.grad_accum - 1
                    ctx = contextlib.nullcontext() if sync else acc.no_sync(model)
                    with ctx, acc.autocast():
                        out = method.training_step(model, batch, step, steps)
                        loss = out.loss
                    acc.backward(loss / cfg.grad_accum)
                    detached = loss.detach().float()
                    nan_step = torch.where((nan_step < 0) & ~torch.isfinite(detached), step + 1, nan_step)
                    loss_sum += detached / cfg.grad_accum
                    for k, v in out.logs.items():
                        v = torch.as_tensor(v, device=device).detach().float()
                        logs_sum[k] = logs_sum.get(k, torch.zeros((), device=device)) + v / cfg.grad_accum
                if cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                method.after_optimizer_step(acc.unwrap_model(model), step)
                window += 1
                done = step + 1
                due_eval = cfg.eval_every and done % cfg.eval_every == 0 or done == steps
                due_ckpt = done % cfg.checkpoint_every == 0 or done == steps
                if done % cfg.log_every == 0 or due_eval or due_ckpt:
                    self._guard(self._all_ranks_max(nan_step))
                    dt = time.perf_counter() - t_window
                    # Logged values are means over every process: the trajectory of the global batch.
                    loss_mean = float(acc.reduce(loss_sum, "mean")) if self.world > 1 else float(loss_sum)
                    values: dict[str, float] = {"loss": loss_mean / window, "lr": float(scheduler.get_last_lr()[0])}
                    for k in sorted(logs_sum):
                        v = acc.reduce(logs_sum[k], "mean") if self.world > 1 else logs_sum[k]
                        values[k] = float(v) / window
                    values["samples_per_s"] = samples_per_step * window / max(dt, 1e-9)
                    monitor.log(done, "train", values)
                    monitor.progress(done, values["loss"], values["samples_per_s"])
                    loss_sum.zero_()
                    logs_sum = {}
                    window, t_window = 0, time.perf_counter()
                if due_eval:
                    last_metrics = self._evaluate(method, model)
                    if self.is_main and last_metrics:
                        monitor.log(done, "val", last_metrics)
                        best = self._maybe_best(method, model, done, last_metrics, best)
                if due_ckpt:
                    state = self._state(model, optimizer, scheduler, done)
                    if self.is_main:
                        save_checkpoint(self.run_dir / "checkpoints", done, state, cfg.keep_checkpoints)
                        save_weights(acc.unwrap_model(model), self.run_dir / "model.safetensors")
                    acc.wait_for_everyone()
        finally:
            monitor.close()
        return TrainResult(self.run_dir, steps, last_metrics, best)

    # ------------------------------------------------------------------------------------------------------------
    def _all_ranks_max(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return value

    def _guard(self, nan_step: torch.Tensor) -> None:
        bad = int(nan_step)
        if bad >= 0:
            ckpts = sorted((self.run_dir / "checkpoints").glob("step_*.pt"))
            last = ckpts[-1].name if ckpts else "none yet"
            raise TrainingDiverged(
                f"the loss became NaN or infinite at step {bad}. Training stopped; the last good checkpoint "
                f"({last}) is intact. Lower train.lr, set train.max_grad_norm, or check the data for broken inputs."
            )

    def _evaluate(self, method: Method, model) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.is_main:
            net = self.accelerator.unwrap_model(model)
            py_state, np_state = random.getstate(), np.random.get_state()
            devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                net.eval()
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in method.evaluate(net, self.accelerator.device).items()}
                net.train()
            random.setstate(py_state)
            np.random.set_state(np_state)
        self.accelerator.wait_for_everyone()
        return metrics

    def _read_best(self) -> dict[str, float] | None:
        import json

        path = self.run_dir / "best.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _maybe_best(self, method: Method, model, step: int, metrics: dict[str, float], best):
        import json

        from fewlabels.engine.checkpoint import _write_text, atomic_write

        if method.metric not in metrics:
            raise KeyError(f"{method.name}.evaluate returned {sorted(metrics)}, without its metric {method.metric!r}")
        value = metrics[method.metric]
        better = best is None or (
            value > best[method.metric] if method.metric_mode == "max" else value < best[method.metric]
        )
        if better:
            best = {"step": step, **metrics}
            save_weights(self.accelerator.unwrap_model(model), self.run_dir / "best.safetensors")
            atomic_write(self.run_dir / "best.json", lambda tmp: _write_text(tmp, json.dumps(best, indent=2)))
        return best


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    return batch


def train(config: RunConfig, resume_dir: str | Path | None = None) -> TrainResult:
    """Train ``config`` (or continue the run in ``resume_dir``) and return the run directory and metrics."""
    return Trainer(config, resume_dir).fit()
