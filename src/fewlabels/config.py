"""Typed configuration: dataclass schemas, YAML files, dotted command-line overrides, validation.

The dataclasses are the source of truth. A YAML file overrides their defaults and ``key.sub=value`` arguments
override the YAML. Every key is checked before any work starts: an unknown key, a value of the wrong type or an
impossible value raises :class:`ConfigError` naming the key and the valid choices (the reference CCT silently ignored
a misspelt ``use_weak_lables``).

Field metadata understood by the validator: ``help`` (text), ``min``/``max`` (inclusive bounds), ``gt`` (strict
lower bound). Every float value must be finite: ``.nan`` and ``.inf`` pass any bound check by the rules of IEEE
comparisons, so they are refused before the bounds are looked at. Dataclasses may define ``validate(self) -> None``
for checks that involve several fields; it raises :class:`ConfigError` through :func:`fail`.

A config file that is not valid YAML (a tab, a bad indent, an unclosed bracket, a ``!!python`` tag, a binary file)
raises :class:`ConfigFileError`, which names the file and the line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an impossible value."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        kind = "option" if key.startswith("-") else "config key"  # a command-line flag is not a config key
        super().__init__(f"{kind} '{key}': {message}")


class ConfigFileError(ConfigError):
    """A config file cannot be read as a mapping of keys: the message names the file and, where known, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.key = str(path)
        self.path = Path(path)
        self.line = line
        where = f"{path}, line {line}" if line is not None else str(path)
        ValueError.__init__(self, f"{where}: {message}")


def fail(key: str, message: str) -> typing.NoReturn:
    raise ConfigError(key, message)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _help(f: dataclasses.Field) -> str:
    return str(f.metadata.get("help", ""))


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping shared by every method. Steps count optimizer updates."""

    steps: int = field(default=1000, metadata={"help": "optimizer steps (ignored when epochs > 0)", "min": 1})
    epochs: float = field(default=0.0, metadata={"help": "if > 0: passes over the largest training source", "min": 0})
    batch_size: int = field(default=8, metadata={"help": "global batch size per step", "min": 1})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches accumulated per step", "min": 1})
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = field(default=0.01, metadata={"help": "peak learning rate", "gt": 0})
    momentum: float = field(default=0.9, metadata={"min": 0, "max": 1})
    weight_decay: float = field(default=1e-4, metadata={"min": 0})
    nesterov: bool = False
    scheduler: Literal["constant", "poly", "cosine", "step"] = "poly"
    poly_power: float = field(default=0.9, metadata={"gt": 0})
    milestones: list[float] = field(
        default_factory=list,
        metadata={"help": "step schedule: fractions of training (0-1) where lr *= gamma"},
    )
    gamma: float = field(default=0.1, metadata={"gt": 0})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    max_grad_norm: float = field(default=0.0, metadata={"help": "gradient clipping (0 = off)", "min": 0})
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(
        default="auto", metadata={"help": "auto = bf16 on CUDA, no on CPU"}
    )
    eval_every: int = field(default=0, metadata={"help": "steps between evaluations (0 = at the end)", "min": 0})
    checkpoint_every: int = field(default=100, metadata={"min": 1})
    keep_checkpoints: int = field(default=2, metadata={"help": "resumable checkpoints kept (>= 2)", "min": 2})
    log_every: int = field(default=10, metadata={"min": 1})
    num_workers: int = field(default=0, metadata={"min": 0})
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def validate(self) -> None:
        if any(not 0 < m < 1 for m in self.milestones):
            fail(
                "train.milestones",
                f"each milestone is a fraction of training in (0, 1), got {self.milestones}",
            )


@dataclass
class RunConfig:
    """Fields common to every run. Methods subclass it and add their own sections (model, data, loss, ...)."""

    method: str = ""
    seed: int = field(default=0, metadata={"help": "seeds every RNG and the data order"})
    output_dir: str = field(default="runs", metadata={"help": "parent folder of run directories"})
    name: str = field(default="", metadata={"help": "run directory name (default: <method>-<time>)"})
    train: TrainConfig = field(default_factory=TrainConfig)


C = TypeVar("C", bound=RunConfig)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            hint = did_you_mean(str(value), [str(c) for c in choices])
            fail(key, f"invalid value {value!r}{hint}; valid choices: {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        fail(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            fail(key, f"expected a list ({_type_name(tp)}), got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                fail(key, f"expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            fail(key, f"expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail(key, f"expected a section (mapping of keys), got {value!r}")
        return _build(tp, value, key)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            fail(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            fail(key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail(key, f"expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        fail(key, f"expected {_type_name(tp)}, got {value!r}")
    return value


def _check_bounds(f: dataclasses.Field, value: Any, key: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if not math.isfinite(value):  # a default set to nan or inf by mistake; given values are refused by _coerce
        fail(key, f"expected a finite number, got {value!r}")
    lo, hi, gt = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("gt")
    if lo is not None and value < lo:
        fail(key, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        fail(key, f"must be <= {hi}, got {value}")
    if gt is not None and value <= gt:
        fail(key, f"must be > {gt}, got {value}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else key
            fail(full, f"unknown key{did_you_mean(key, list(fields))}; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        section = dataclasses.is_dataclass(hints[name]) and isinstance(hints[name], type)
        if section and f.default_factory is not dataclasses.MISSING:
            # A section given in YAML overrides the method's own defaults for it (its default_factory), not
            # the bare defaults of the section's class.
            given = data.get(name, {})
            if not isinstance(given, Mapping):
                fail(full, f"expected a section (mapping of keys), got {given!r}")
            value = _build(hints[name], _merge(to_dict(f.default_factory()), given), full)
        elif name in data:
            value = _coerce(data[name], hints[name], full)
        elif section:
            value = _build(hints[name], {}, full)
        else:
            continue
        _check_bounds(f, value, full)
        kwargs[name] = value
    obj = cls(**kwargs)
    # Defaults are checked too: a subclass may set an impossible default by mistake.
    for name, f in fields.items():
        _check_bounds(f, getattr(obj, name), f"{prefix}.{name}" if prefix else name)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            # Section validators name their keys as they sit in a run config ("data.root"); the same section
            # used elsewhere (an item of a list, e.g. "domains[0]") names the key where it actually is.
            head, dot, rest = e.key.partition(".")
            if prefix and dot and "." not in prefix and head != prefix:
                raise ConfigError(f"{prefix}.{rest}", str(e).split("': ", 1)[1]) from None
            raise
    return obj


def _merge(base: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in given.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


def build_config(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build and validate a config of class ``cls`` from a nested mapping."""
    return _build(cls, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.lr=0.1' -> (['train', 'lr'], 0.1). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(item, "overrides are written key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(key or item, "empty key in override")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(key, f"cannot parse value {raw!r}: {e}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with every ``key.sub=value`` override applied."""
    out = _deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(path[: i + 1]), "is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def _yaml_line(error: yaml.YAMLError, text: str) -> int | None:
    """The 1-based line of ``text`` that a YAML error points at, if it points at one."""
    if isinstance(error, yaml.reader.ReaderError):
        return text[: error.position].count("\n") + 1
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """The one-line reason of a YAML error, without PyYAML's multi-line excerpt of the file."""
    if isinstance(error, yaml.reader.ReaderError):
        char = error.character
        code = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        return f"the control character {code} cannot appear in a text config (is it a binary file?)"
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    if isinstance(error, yaml.constructor.ConstructorError) and "tag" in str(problem):
        return f"{problem.rstrip('.')}; config files hold plain values only (no !!python or other tags)"
    return f"{context}, {problem}" if context else str(problem)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) config file as a mapping; :class:`ConfigFileError` names the file and line if it is not."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigFileError(p, "not a text file (it does not decode as UTF-8); give a YAML config", line) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigFileError(p, f"not valid YAML: {_yaml_problem(e)}", _yaml_line(e, text)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), "a config file must be a mapping of keys")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def dump_yaml(config: Any) -> str:
    """The YAML text of a config (or any nested mapping of plain values), keys in schema order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def write_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(dump_yaml(config))


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every key of ``cls``: used by ``fewlabels methods NAME``.

    The defaults shown are the ones a run gets: those of the config built from nothing but the method's own
    defaults, section values included (a method config that overrides the shared ``train`` defaults with
    ``train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300))`` shows 300, not the bare default of
    the section's class), after its validators have filled in any value derived from others. A config that cannot be
    built without a key of the user's (a teacher run, say) shows the defaults of its plain instance. ``defaults`` is
    the object whose values are shown (the config built that way when omitted).
    """
    rows: list[tuple[str, str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    if defaults is None:
        try:
            defaults = _build(cls, {})
        except ConfigError:
            defaults = cls()
    default_obj = defaults
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        value = getattr(default_obj, f.name)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            rows.extend(describe(tp, key, value if isinstance(value, tp) else None))
        else:
            rows.append((key, _type_name(tp), value, _help(f)))
    return rows
