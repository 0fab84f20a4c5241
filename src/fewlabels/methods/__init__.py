"""Built-in methods. Importing this package registers every one of them.

Methods hold algorithms only: their commands (``fewshot-eval``, ``peft-count``, ``cct-pseudo-labels``, ...) live in
:mod:`fewlabels.commands`, and nothing here imports the engine, the commands, the CLI or the demo.
"""

from __future__ import annotations

import importlib

#: method packages, imported in this order; each registers its methods with :func:`fewlabels.registry.register_method`
BUILTIN = ("supervised", "cct", "ac", "scl", "relbitfit", "pretrain")

for _name in BUILTIN:
    importlib.import_module(f"fewlabels.methods.{_name}")
