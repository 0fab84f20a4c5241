"""Method registry: name -> Method subclass (which carries its config class).

Methods register themselves with :func:`register_method` when their package is imported; importing ``fewlabels.methods``
imports every built-in method. The registry doubles as the test matrix: every registered method runs the same battery
(one step, save/load round trip, kill and resume, two-process equivalence).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeVar

from fewlabels.config import ConfigError, RunConfig, apply_overrides, build_config, did_you_mean, read_yaml

if TYPE_CHECKING:
    from fewlabels.methods.base import Method

M = TypeVar("M", bound="type[Method[Any]]")

_METHODS: dict[str, type[Method[Any]]] = {}


def register_method(cls: M) -> M:
    """Class decorator: register a :class:`~fewlabels.methods.base.Method` subclass under ``cls.name``."""
    name = cls.name
    if not name:
        raise ValueError(f"{cls.__name__} has no name")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"method {name!r} registered twice ({_METHODS[name].__name__} and {cls.__name__})")
    _METHODS[name] = cls
    return cls


def _load_builtin() -> None:
    importlib.import_module("fewlabels.methods")


def available_methods() -> dict[str, type[Method[Any]]]:
    _load_builtin()
    return dict(sorted(_METHODS.items()))


def get_method(name: str) -> type[Method[Any]]:
    methods = available_methods()
    if name not in methods:
        raise ConfigError(
            "method",
            f"unknown method {name!r}{did_you_mean(name, list(methods))}; registered: {', '.join(methods)}",
        )
    return methods[name]


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Validate a nested mapping (+ overrides) against the schema of the method it names."""
    merged = apply_overrides(data, list(overrides))
    name = merged.get("method")
    if not name:
        raise ConfigError("method", f"missing; choose one of: {', '.join(available_methods())}")
    if not isinstance(name, str):
        raise ConfigError("method", f"expected a method name, got {name!r}")
    cls = get_method(name)
    return build_config(cls.config_class, merged)


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config file, apply ``key.sub=value`` overrides and validate."""
    return config_from_dict(read_yaml(path), overrides)
