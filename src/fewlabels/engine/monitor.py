"""Run monitoring: ``metrics.jsonl``, TensorBoard scalars and the progress display (main process only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fewlabels.progress import Progress


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


class Monitor:
    """Writes records to metrics.jsonl and TensorBoard and shows progress. Inactive on non-main ranks."""

    def __init__(
        self, run_dir: Path, total_steps: int, start_step: int, active: bool, tensorboard: bool = True
    ) -> None:
        self.active = active
        self.total, self.start = total_steps, start_step
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        #: the bar on a terminal, else a status line every ``FEWLABELS_PROGRESS_INTERVAL`` s (the policy of every
        #: long command, :mod:`fewlabels.progress`)
        self.display = Progress(total_steps, "train", "steps", initial=start_step, enabled=active, leave=True)
        if not active:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

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
        """Update the bar (TTY) or print a sparse status line (logs, CI), with the loss and the throughput."""
        if not self.active:
            return
        self.display.set_postfix(f"loss {loss:.4f}, {samples_per_s:.1f} samples/s")
        self.display.update_to(step)

    def close(self) -> None:
        self.display.close()
        if self.writer is not None:
            self.writer.close()
