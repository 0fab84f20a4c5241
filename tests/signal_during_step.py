"""Run the CLI, but send this process a signal in the middle of training step ``FEWLABELS_TEST_SIGNAL_AT`` (0-based).

``FEWLABELS_TEST_SIGNAL`` names the signal (default SIGTERM); ``FEWLABELS_TEST_SIGNAL_RANK`` picks the one process
of a ``torchrun`` group that receives it (default: every process). The signal arrives at a deterministic point, so
the step the run stops after is known: the one during which the signal came.
"""

from __future__ import annotations

import os
import signal
import sys

import toy_method  # noqa: F401  (registers "toy")
from fewlabels.registry import available_methods

SIGNAL_AT = int(os.environ["FEWLABELS_TEST_SIGNAL_AT"])
SIGNAL = signal.Signals[os.environ.get("FEWLABELS_TEST_SIGNAL", "SIGTERM")]
RANK = os.environ.get("FEWLABELS_TEST_SIGNAL_RANK")


def _wrap(cls):
    original = cls.training_step

    def training_step(self, model, batch, step, total_steps):
        out = original(self, model, batch, step, total_steps)
        if step == SIGNAL_AT and (RANK is None or os.environ.get("RANK", "0") == RANK):
            os.kill(os.getpid(), SIGNAL)
        return out

    cls.training_step = training_step


for _cls in available_methods().values():
    _wrap(_cls)

if __name__ == "__main__":
    from fewlabels.cli import main

    raise SystemExit(main(sys.argv[1:]))
