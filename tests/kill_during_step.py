"""Run the CLI, but SIGKILL the process in the middle of training step ``FEWLABELS_TEST_KILL_AT`` (0-based).

Used by the crash-safety tests: the kill is a real SIGKILL (no cleanup, no flush) at a deterministic point, after
at least one checkpoint and before the run ends.
"""

from __future__ import annotations

import os
import signal
import sys

import toy_method  # noqa: F401  (registers "toy")
from fewlabels.registry import available_methods

KILL_AT = int(os.environ["FEWLABELS_TEST_KILL_AT"])


def _wrap(cls):
    original = cls.training_step

    def training_step(self, model, batch, step, total_steps):
        out = original(self, model, batch, step, total_steps)
        if step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    cls.training_step = training_step


for _cls in available_methods().values():
    _wrap(_cls)

if __name__ == "__main__":
    from fewlabels.cli import main

    raise SystemExit(main(sys.argv[1:]))
