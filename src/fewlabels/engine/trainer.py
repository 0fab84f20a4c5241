"""The training loop every method runs through.

Hugging Face Accelerate does the plumbing (device placement, DDP under ``torchrun``/``accelerate launch``, mixed
precision, gradient synchronisation); this module adds the run directory, exact resume, checkpoints, evaluation,
best-checkpoint selection, logging and the NaN guard.

Order inside optimizer step ``t`` (0-based, ``t + 1`` steps done afterwards): ``grad_accum`` micro-batches forward and
backward, clip, optimizer and scheduler step, then — at their intervals — NaN check + log, checkpoint, evaluation.
The checkpoint comes first, so an evaluation that fails never costs the steps before it; every evaluation step is
also a checkpoint step. Evaluation runs inside a forked RNG so that it never changes the training trajectory, and a
resumed run whose last checkpoint is an evaluation step without its evaluation on record evaluates it first.

A run directory belongs to one live process (``rundir.RunDirLock``). SIGTERM and SIGINT stop the run after the
current step with a checkpoint of it (``signals.StopRequest``); every process agrees on the step to stop at.
"""

from __future__ import annotations

import contextlib
import errno
import json
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

from fewlabels.config import ConfigError, RunConfig, TrainConfig, dump_yaml
from fewlabels.engine.allocator import tune_for_training
from fewlabels.engine.checkpoint import (
    CheckpointError,
    _write_text,
    atomic_write,
    checkpoint_path,
    latest_valid_checkpoint,
    list_checkpoints,
    non_finite_tensors,
    save_checkpoint,
    save_weights,
)
from fewlabels.engine.data import step_loader
from fewlabels.engine.distributed import close_process_group_at_exit, convert_batchnorm
from fewlabels.engine.monitor import Monitor, read_metrics, truncate_metrics
from fewlabels.engine.rng import capture_rng_state, restore_rng_state, seed_everything
from fewlabels.engine.rundir import RunDirError, RunDirLock, create_unique_dir, write_failed
from fewlabels.engine.signals import StopRequest, TrainingInterrupted, signal_name
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


#: errors of a write that the user fixes on the machine (space, quota, read-only file system), not in the config
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is left intact."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    metrics: dict[str, float]
    best: dict[str, float] | None
    #: False on every process but the main one of a ``torchrun`` group (which alone reports the result)
    is_main: bool = True


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
            tune_for_training()  # reuse freed activation memory, if this process opted in (the CLI does)
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
        self._lock: RunDirLock | None = None
        if self.is_main and (resume_dir is not None or config.name):
            RunDirLock(self.run_dir).raise_if_held()  # a clash is reported before the data and model are built
        # The per-step "stop?" vote is a CPU all-reduce: on gloo directly, beside NCCL through a gloo group of its own
        # (a CUDA tensor would synchronise the device every step).
        self._vote_group: Any = None
        if self.world > 1:
            close_process_group_at_exit()
        if self.world > 1 and "gloo" not in str(torch.distributed.get_backend()):
            self._vote_group = torch.distributed.new_group(backend="gloo")
        if resume_dir is None and config.name and any((self.run_dir / "checkpoints").glob("step_*.pt")):
            raise ConfigError(
                "name",
                f"run directory {self.run_dir} already holds a run; resume it with --resume {self.run_dir} "
                "or choose another name",
            )

    # ------------------------------------------------------------------------------------------------------------
    def _prepare_run_dir(self, resume_dir: str | Path | None) -> Path:
        """Rank 0 takes the run directory (see :meth:`_take_run_dir`); every rank gets its path, or rank 0's error."""
        run_dir: Path | None = None
        error: Exception | None = None
        if self.is_main:
            try:
                run_dir = self._take_run_dir(resume_dir)
            except (ConfigError, RunDirError, CheckpointError) as e:
                error = e
        if self.world > 1:
            shared = broadcast_object_list([str(run_dir) if run_dir is not None else "", str(error or "")])
            if error is None and shared[1]:
                raise RunDirError(shared[1])  # rank 0 could not take the directory: every rank stops with its reason
            run_dir = Path(shared[0])
        if error is not None:
            raise error
        assert run_dir is not None
        return run_dir

    def _take_run_dir(self, resume_dir: str | Path | None) -> Path:
        """Create (or reopen) the run directory, lock it for this process, and write the run's config into it.

        A new unnamed run gets a directory of its own, created atomically. A named one may reuse a directory that
        holds no checkpoint yet (a run that failed before its first); one holding a run, or one that a live process
        holds, is refused.
        """
        out = Path(self.config.output_dir)
        if resume_dir is not None:
            run_dir = Path(resume_dir)
        elif self.config.name:
            run_dir = out / self.config.name
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise write_failed(run_dir, e) from None
        else:
            try:
                run_dir = create_unique_dir(out, _default_name(self.config.method))
            except OSError as e:
                raise write_failed(out, e) from None
        self._lock = RunDirLock(run_dir)
        self._lock.acquire()
        ckpt_dir = run_dir / "checkpoints"
        if resume_dir is None and ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
            raise ConfigError(
                "name",
                f"run directory {run_dir} already holds a run; resume it with --resume {run_dir} "
                "or choose another name",
            )
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_failed(run_dir, e) from None
        if resume_dir is None:  # a resumed run's config is rewritten only once its checkpoint has loaded
            self._write_config(run_dir)
        return run_dir

    def _write_config(self, run_dir: Path) -> None:
        """The run's config (with the overrides it was started or resumed with) as ``run_dir/config.yaml``."""
        try:
            text = dump_yaml(self.config)
            atomic_write(run_dir / "config.yaml", lambda tmp: _write_text(tmp, text))
        except CheckpointError as e:
            if isinstance(e.__cause__, OSError):
                raise write_failed(run_dir, e.__cause__) from None
            raise
        except OSError as e:
            raise write_failed(run_dir, e) from None

    def _release_run_dir(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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

    def _state(self, model, optimizer, scheduler, step: int, method: Method[Any] | None = None) -> dict[str, Any]:
        rng = capture_rng_state()
        all_rng = gather_object([rng]) if self.world > 1 else [rng]
        net = self.accelerator.unwrap_model(model)
        saved = method.saved_state(net) if method is not None else None  # what the method stores (None: all)
        return {
            "format": 1,
            "method": self.config.method,
            "step": step,
            "world_size": self.world,
            "model": net.state_dict() if saved is None else saved,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": all_rng,
        }

    # ------------------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to ``train.steps`` (or the epochs' worth), resuming from the run's last valid checkpoint if any.

        Raises TrainingDiverged (NaN or inf loss or weights), TrainingInterrupted (SIGTERM/SIGINT, after a checkpoint
        of the current step), RunDirError (directory taken by a live process, not writable, disk full) or
        CheckpointError; in each case the checkpoints already on disk are intact and the run directory is released.
        """
        stop = StopRequest()  # installed by _fit when the first step starts
        try:
            return self._fit(stop)
        except OSError as e:
            if e.errno in _WRITE_ERRNOS or (e.errno in (errno.EACCES, errno.EPERM) and self._inside_run(e)):
                raise write_failed(self.run_dir, e) from e
            raise
        finally:
            stop.restore()
            self._release_run_dir()

    def _inside_run(self, error: OSError) -> bool:
        """Whether the file ``error`` names lies in the run directory."""
        if not error.filename:
            return False
        run = self.run_dir.resolve()
        path = Path(str(error.filename)).resolve()
        return path == run or run in path.parents

    def _fit(self, stop: StopRequest) -> TrainResult:
        acc, cfg = self.accelerator, self.cfg
        method: Method[Any] = get_method(self.config.method)(self.config)
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
            method.load_saved_state(acc.unwrap_model(model), state["model"])
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
            if self.resume_dir is not None:  # the checkpoint loaded: now the resumed settings replace the old ones
                self._write_config(self.run_dir)
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
        if found is not None and self._evaluation_missing(start, steps):
            # The run stopped (a signal, a failed evaluation) between the checkpoint of an evaluation step and the
            # evaluation itself: evaluate those weights now, as the uninterrupted run did at that step.
            last_metrics, best = self._evaluation_step(method, model, monitor, start, best)
        device = acc.device
        nan_step = torch.full((), -1, dtype=torch.long, device=device)
        loss_sum = torch.zeros((), device=device)
        logs_sum: dict[str, torch.Tensor] = {}
        window, t_window = 0, time.perf_counter()
        model.train()
        stop.install()
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
                stop_signal = self._agreed_stop(stop)
                due_eval = self._due_eval(done, steps)
                due_ckpt = done % cfg.checkpoint_every == 0 or done == steps or due_eval or stop_signal > 0
                if done % cfg.log_every == 0 or due_ckpt:
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
                if due_ckpt:
                    self._check_weights(model, done)
                    state = self._state(model, optimizer, scheduler, done, method)
                    if self.is_main:
                        save_checkpoint(self.run_dir / "checkpoints", done, state, cfg.keep_checkpoints)
                        net = acc.unwrap_model(model)
                        save_weights(net, self.run_dir / "model.safetensors", method.saved_state(net))
                    acc.wait_for_everyone()
                if stop_signal:
                    # A due evaluation is left to the resumed run (see _evaluation_missing): stopping stays quick.
                    name = checkpoint_path(self.run_dir / "checkpoints", done).name
                    raise TrainingInterrupted(
                        stop_signal,
                        f"stopped by {signal_name(stop_signal)} after step {done}/{steps}; checkpoint {name} "
                        f"written; continue with `fewlabels train --resume {self.run_dir}`",
                    )
                if due_eval:
                    last_metrics, best = self._evaluation_step(method, model, monitor, done, best)
        finally:
            monitor.close()
        return TrainResult(self.run_dir, steps, last_metrics, best, is_main=self.is_main)

    # ------------------------------------------------------------------------------------------------------------
    def _all_ranks_max(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return value

    def _agreed_stop(self, stop: StopRequest) -> int:
        """The signal every process stops on after this step, or 0 to go on; all ranks get the same answer."""
        local = stop.signum or 0
        if self.world == 1:
            return local
        vote = torch.tensor([local], dtype=torch.int64)
        torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX, group=self._vote_group)
        return int(vote.item())

    def _due_eval(self, done: int, steps: int) -> bool:
        return bool(self.cfg.eval_every and done % self.cfg.eval_every == 0) or done == steps

    def _diverged(self, what: str) -> TrainingDiverged:
        ckpts = sorted((self.run_dir / "checkpoints").glob("step_*.pt"))
        last = ckpts[-1].name if ckpts else "none yet"
        return TrainingDiverged(
            f"{what}. Training stopped; the last good checkpoint ({last}) is intact. Lower train.lr, set "
            "train.max_grad_norm, or check the data for broken inputs."
        )

    def _guard(self, nan_step: torch.Tensor) -> None:
        bad = int(nan_step)
        if bad >= 0:
            raise self._diverged(f"the loss became NaN or infinite at step {bad}")

    def _check_weights(self, model: torch.nn.Module, step: int) -> None:
        """Stop before a checkpoint would store NaN or infinite weights (a finite loss does not rule them out)."""
        bad = non_finite_tensors(self.accelerator.unwrap_model(model).state_dict())
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise self._diverged(f"the weights became NaN or infinite at step {step} ({shown})")

    def _evaluation_missing(self, step: int, steps: int) -> bool:
        """Whether ``step`` is an evaluation step with no validation record (rank 0 reads, every rank learns)."""
        missing = False
        if self.is_main and self._due_eval(step, steps):
            records = read_metrics(self.run_dir / "metrics.jsonl")
            missing = not any(r.get("step") == step and r.get("split") == "val" for r in records)
        return bool(broadcast_object_list([missing])[0]) if self.world > 1 else missing

    def _evaluation_step(
        self, method: Method[Any], model: Any, monitor: Monitor, step: int, best: dict[str, float] | None
    ) -> tuple[dict[str, float], dict[str, float] | None]:
        """Evaluate at ``step``, log the metrics and keep the best weights; returns the metrics and the best record."""
        metrics = self._evaluate(method, model)
        if self.is_main and metrics:
            monitor.log(step, "val", metrics)
            best = self._maybe_best(method, model, step, metrics, best)
        return metrics, best

    def _evaluate(self, method: Method[Any], model) -> dict[str, float]:
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
        path = self.run_dir / "best.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _maybe_best(self, method: Method[Any], model, step: int, metrics: dict[str, float], best):
        if method.metric not in metrics:
            raise KeyError(f"{method.name}.evaluate returned {sorted(metrics)}, without its metric {method.metric!r}")
        value = metrics[method.metric]
        better = best is None or (
            value > best[method.metric] if method.metric_mode == "max" else value < best[method.metric]
        )
        if better:
            best = {"step": step, **metrics}
            net = self.accelerator.unwrap_model(model)
            save_weights(net, self.run_dir / "best.safetensors", method.saved_state(net))
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
