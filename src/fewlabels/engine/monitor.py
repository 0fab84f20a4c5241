"""Run monitoring: ``metrics.jsonl``, TensorBoard scalars and the progress display (main process only)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop records logged after ``after_step``: a killed run may have logged past its last checkpoint."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Monitor:
    """Writes records to metrics.jsonl and TensorBoard and shows progress. Inactive on non-main ranks."""

    def __init__(
        self, run_dir: Path, total_steps: int, start_step: int, active: bool, tensorboard: bool = True
    ) -> None:
        self.active = active
        self.total, self.start = total_steps, start_step
        self.path = run_dir / "metrics.jsonl"
        self.t0 = time.perf_counter()
        self.last_line = self.t0
        self.writer = None
        self.bar = None
        if not active:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        self.tty = sys.stderr.isatty()
        if self.tty:
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step", leave=True)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.active:
            return
        record = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{split}/{k}", float(v), step)

    def progress(self, step: int, loss: float, samples_per_s: float) -> None:
        """Update the bar (TTY) or print a sparse status line (logs, CI)."""
        if not self.active:
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done else float("inf")
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.1f}", refresh=False)
            self.bar.refresh()
        elif time.perf_counter() - self.last_line > 30 or step == self.total:
            self.last_line = time.perf_counter()
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  {samples_per_s:.1f} samples/s  eta {_fmt_time(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
