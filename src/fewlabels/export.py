"""Exporting a trained run's predictor to ONNX, TorchScript or safetensors (``fewlabels export``).

Each method says what it exports (:meth:`fewlabels.methods.base.Method.export_module`): a module with a plain
tensor-in, tensor-out forward, example inputs, which axes are dynamic, and the run's own predictor to compare with.
This module writes it in one of three formats and checks the written file against that predictor::

    from fewlabels.export import export_run
    result = export_run("runs/cct-voc", "onnx", "cct.onnx")
    print(result.summary(), result.check_line())

Formats (every artefact carries the same JSON description of its inputs, outputs, classes and normalisation: the
ONNX metadata property ``fewlabels``, the TorchScript extra file ``fewlabels.json``, the safetensors metadata key
``fewlabels``):

- ``onnx``: ``torch.onnx.export(..., dynamo=True)`` (needs the ``onnx`` and ``onnxscript`` packages; the check runs
  it with ``onnxruntime``), one self-contained file, the dynamic axes named (``batch``, ``height``, ...).
- ``torchscript``: ``torch.jit.trace``, saved with ``torch.jit.save``; ``torch.jit.load`` needs only torch.
- ``safetensors``: the state dict of the exported module; the module itself is rebuilt with fewlabels
  (``Method.export_module``), so this is the format for fewlabels users who want one file of weights.

A file is written next to ``--out`` under a temporary name, checked, and only then renamed to ``--out``: a failed
export or check leaves no file and never replaces an existing one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewlabels.config import ConfigError
from fewlabels.methods.base import ExportSpec

__all__ = [
    "FORMATS",
    "CheckResult",
    "ExportError",
    "ExportResult",
    "check_artefact",
    "export_run",
    "format_of",
    "missing_packages",
    "open_artefact",
    "read_metadata",
    "write_artefact",
]

#: the formats of ``fewlabels export``
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "safetensors")
#: ``--out`` suffixes that tell the format when ``--format`` is not given
SUFFIXES: dict[str, str] = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
    ".safetensors": "safetensors",
}
#: packages beyond fewlabels' own that writing a format needs, and that its check needs
WRITE_PACKAGES: dict[str, tuple[str, ...]] = {"onnx": ("onnx", "onnxscript")}
CHECK_PACKAGES: dict[str, tuple[str, ...]] = {"onnx": ("onnxruntime",)}
#: the key of the JSON description in every artefact
METADATA_KEY = "fewlabels"
#: the TorchScript extra file that holds it
TORCHSCRIPT_EXTRA = "fewlabels.json"
#: the default tolerance of the check: max |artefact - predictor| <= tolerance x max(1, max |predictor|)
TOLERANCE = 1e-4


class ExportError(ValueError):
    """An export or its check failed (one line: the format, what, and the exporter's first line)."""


def format_of(fmt: str | None, out: str | Path) -> str:
    """The format asked for (``--format``), else the one ``out``'s suffix names; a ConfigError for an unknown one."""
    if fmt is None:
        suffix = Path(out).suffix.lower()
        if suffix not in SUFFIXES:
            raise ConfigError(
                "--format",
                f"give --format {'|'.join(FORMATS)} (the suffix of --out {out} does not name one: "
                f"{', '.join(SUFFIXES)})",
            )
        return SUFFIXES[suffix]
    name = fmt.strip().lower()
    if name not in FORMATS:
        raise ConfigError("--format", f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return name


def missing_packages(fmt: str, check: bool = True) -> list[str]:
    """The packages that writing ``fmt`` (and, with ``check``, running it) needs and that are not installed."""
    import importlib.util

    wanted = WRITE_PACKAGES.get(fmt, ()) + (CHECK_PACKAGES.get(fmt, ()) if check else ())
    return [name for name in wanted if importlib.util.find_spec(name) is None]


# --- writing ------------------------------------------------------------------------------------------------------
def _first_line(error: BaseException) -> str:
    """The first informative line of an exporter's (often very long) error message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:  # torch.onnx's summary names the exception under "## Exception summary"
        if line.startswith("<class ") and ">: " in line:
            return line.split(">: ", 1)[1][:300]
    text = lines[0] if lines else type(error).__name__
    return text[:300]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters' warnings (deprecation of ``torch.jit.trace``, tracer warnings, torchvision not installed) and
    progress lines off: the command prints one summary line."""
    loggers = [
        logging.getLogger(name)
        for name in ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "onnxscript", "onnx_ir")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _dynamic_shapes(spec: ExportSpec) -> tuple[dict[int, Any], ...]:
    from torch.export import Dim

    return tuple({axis: Dim.DYNAMIC for axis in spec.dynamic_axes.get(name, {})} for name in spec.inputs)


def _write_onnx(spec: ExportSpec, path: Path, metadata: str) -> None:
    args = tuple(spec.inputs.values())

    def export(optimize: bool) -> Any:
        return torch.onnx.export(
            spec.module,
            args,
            dynamo=True,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_shapes=_dynamic_shapes(spec),
            external_data=False,
            optimize=optimize,
            verbose=False,
        )

    with _quiet(), torch.no_grad():
        try:
            program = export(optimize=True)
        except Exception as e:  # noqa: BLE001 - see below
            # onnxscript's graph optimiser fails on some graphs that translate fine (its constant folding of the
            # SplitToSequence of AC's 8-view ensemble): the unoptimised graph computes the same.
            if not any(type(c).__name__ == "PassError" for c in _causes(e)):
                raise
            program = export(optimize=False)
        if program is None:  # only the TorchScript-based exporter (dynamo=False) returns nothing
            raise RuntimeError("torch.onnx.export returned no program")
        # Name the dynamic axes (batch, height, ...) instead of the exporter's symbols (s0, s1, ...): the inputs',
        # then the outputs' (an output axis may be an expression of them, e.g. a crop "Min(height, ...)").
        for values, names in ((program.model.graph.inputs, spec.inputs), (program.model.graph.outputs, spec.outputs)):
            renames: dict[str, str] = {}
            for value, name in zip(values, names):
                for axis, dim_name in spec.dynamic_axes.get(name, {}).items():
                    shape = value.shape
                    symbol = getattr(shape[axis], "value", None) if shape is not None else None
                    if isinstance(symbol, str) and symbol != dim_name and symbol not in renames:
                        renames[symbol] = dim_name
            if renames:
                program.rename_axes(renames)
        program.model.metadata_props[METADATA_KEY] = metadata
        program.save(str(path), external_data=False)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the chain of exceptions it was raised from."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _write_torchscript(spec: ExportSpec, path: Path, metadata: str) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(spec.module, tuple(spec.inputs.values()), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: metadata})


def _write_safetensors(spec: ExportSpec, path: Path, metadata: str) -> None:
    from safetensors.torch import save_model

    save_model(spec.module, str(path), metadata={METADATA_KEY: metadata, "format": "pt"})


WRITERS: dict[str, Callable[[ExportSpec, Path, str], None]] = {
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
    "safetensors": _write_safetensors,
}


def write_artefact(spec: ExportSpec, fmt: str, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write ``spec.module`` to ``path`` in ``fmt`` with ``metadata`` (JSON) inside; an ExportError (one line) when
    the exporter fails."""
    text = json.dumps(metadata, sort_keys=True)
    try:
        WRITERS[fmt](spec, Path(path), text)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - exporters raise anything; the user gets one line naming it
        raise ExportError(f"{fmt} export failed: {_first_line(e)}") from e


# --- reading back -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_artefact(fmt: str, path: str | Path, spec: ExportSpec) -> Iterator[Callable[..., tuple[Tensor, ...]]]:
    """A function that runs the written artefact on inputs like ``spec.inputs`` (tensors, by position) and returns
    its outputs: onnxruntime for ONNX, ``torch.jit.load`` for TorchScript; for safetensors ``spec.module`` itself
    with every saved tensor zeroed, then loaded from the file (a copy would lose what hooks tie to the original,
    e.g. the mean head's mask); its tensors are put back when the context ends."""
    path = str(path)
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(*inputs: Tensor) -> tuple[Tensor, ...]:
            feed = {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)}
            return tuple(torch.from_numpy(o) for o in session.run(None, feed))

        yield run_onnx
    elif fmt == "torchscript":
        device = next(iter(spec.inputs.values())).device
        with _quiet():
            loaded = torch.jit.load(path, map_location=device)

        def run_torchscript(*inputs: Tensor) -> tuple[Tensor, ...]:
            with torch.no_grad():
                return _as_tuple(loaded(*inputs))

        yield run_torchscript
    elif fmt == "safetensors":
        from safetensors.torch import load_model

        module = spec.module
        state = module.state_dict()
        kept = {k: v.detach().clone() for k, v in state.items()}
        try:
            with torch.no_grad():
                for tensor in state.values():
                    tensor.zero_()
            load_model(module, path, strict=True)

            def run_module(*inputs: Tensor) -> tuple[Tensor, ...]:
                with torch.no_grad():
                    return _as_tuple(module(*inputs))

            yield run_module
        finally:
            with torch.no_grad():
                for name, tensor in module.state_dict().items():
                    tensor.copy_(kept[name])
    else:
        raise ValueError(f"unknown format {fmt!r}")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON description that :func:`export_run` wrote into an artefact (any of the three formats)."""
    p = Path(path)
    with p.open("rb") as fh:
        head = fh.read(8)
    if head[:2] == b"PK":  # a zip: TorchScript
        extra = {TORCHSCRIPT_EXTRA: ""}
        with _quiet():
            torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
        return dict(json.loads(extra[TORCHSCRIPT_EXTRA]))
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            return dict(json.loads((fh.metadata() or {})[METADATA_KEY]))
    except Exception:  # noqa: BLE001 - not a safetensors file: ONNX
        import onnx

        model = onnx.load(str(p), load_external_data=False)
        return dict(json.loads({m.key: m.value for m in model.metadata_props}[METADATA_KEY]))


def _as_tuple(out: Any) -> tuple[Tensor, ...]:
    if isinstance(out, Tensor):
        return (out,)
    return tuple(out)


# --- checking -----------------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The artefact against the run's predictor on one set of inputs."""

    shapes: dict[str, tuple[int, ...]]
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def shape_text(self) -> str:
        return "x".join(str(n) for n in next(iter(self.shapes.values())))


def check_artefact(fmt: str, path: str | Path, spec: ExportSpec, tolerance: float = TOLERANCE) -> list[CheckResult]:
    """Run the artefact at ``path`` on the example inputs and on ``spec.check_inputs`` (other sizes on the dynamic
    axes) and compare every output with ``spec.reference``: max |artefact - predictor| per input set, against
    ``tolerance x max(1, max |predictor|)``."""
    sets = [spec.inputs, *spec.check_inputs]
    with torch.no_grad():
        references = [_as_tuple(spec.reference(*inputs.values())) for inputs in sets]
    outputs = []
    try:
        with open_artefact(fmt, path, spec) as run:
            for inputs in sets:
                try:
                    outputs.append(run(*inputs.values()))
                except Exception as e:  # noqa: BLE001 - a runtime's own error types: one line naming the inputs
                    raise ExportError(
                        f"the {fmt} artefact fails on inputs {_shapes_text(inputs)}: {_first_line(e)}"
                    ) from e
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - the file does not load
        raise ExportError(f"the written {fmt} artefact does not load: {_first_line(e)}") from e
    results = []
    for inputs, got, expected in zip(sets, outputs, references):
        if len(got) != len(expected):
            raise ExportError(f"the {fmt} artefact returns {len(got)} outputs, the predictor {len(expected)}")
        diff, scale = 0.0, 1.0
        for name, a, b in zip(spec.outputs, got, expected):
            b = b.detach().float().cpu()
            a = a.detach().float().cpu()
            if a.shape != b.shape:
                raise ExportError(
                    f"the {fmt} artefact's {name} has shape {tuple(a.shape)} where the predictor's has "
                    f"{tuple(b.shape)} (inputs {_shapes_text(inputs)})"
                )
            if b.numel():
                diff = max(diff, float((a - b).abs().max()))
                scale = max(scale, float(b.abs().max()))
        results.append(CheckResult({k: tuple(v.shape) for k, v in inputs.items()}, diff, tolerance * scale))
    return results


def _shapes_text(inputs: dict[str, Tensor]) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in inputs.items())


# --- the whole export ---------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    """What :func:`export_run` wrote and how its check went."""

    path: Path
    fmt: str
    description: str
    size: int
    metadata: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)

    def summary(self) -> str:
        """``exported <what> as <format> to <file> (<size>)``."""
        return f"exported {self.description} as {self.fmt} to {self.path} ({_human_size(self.size)})"

    def check_line(self) -> str:
        """``check: max abs diff ... vs the run's predictor on inputs ... (tolerance ...)``, or '' without a check."""
        if not self.checks:
            return ""
        worst = max(c.max_abs_diff for c in self.checks)
        shapes = ", ".join(c.shape_text() for c in self.checks)
        tol = min(c.tolerance for c in self.checks)
        return (
            f"check: max abs diff {worst:.3g} between the {self.fmt} artefact and the run's predictor on inputs "
            f"{shapes} (tolerance {tol:.3g})"
        )


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def check_out(out: str | Path, run_dir: str | Path) -> Path:
    """``--out`` resolved; a ConfigError when it is an existing directory or a file of the run directory."""
    target = Path(out).expanduser()
    if target.is_dir():
        raise ConfigError(
            "--out", f"{out} is a directory; --out names the file to write (e.g. {Path(out) / 'model.onnx'})"
        )
    resolved = target.resolve()
    run = Path(run_dir).expanduser().resolve()
    if resolved.exists() and (resolved == run or run in resolved.parents):
        raise ConfigError("--out", f"{out} is a file of the run directory {run_dir}; choose a path outside it")
    return resolved


def export_metadata(spec: ExportSpec, run_dir: Path, method: str, weights: Path, fmt: str) -> dict[str, Any]:
    """The JSON description written into the artefact."""
    from fewlabels import __version__

    return {
        "fewlabels_version": __version__,
        "format": fmt,
        "method": method,
        "run": os.fspath(run_dir),
        "weights": weights.name,
        "description": spec.description,
        "input_names": list(spec.inputs),
        "output_names": list(spec.outputs),
        "dynamic_axes": {name: {str(a): d for a, d in axes.items()} for name, axes in spec.dynamic_axes.items()},
        **spec.metadata,
    }


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    which: str = "best",
    device: str = "cpu",
    overrides: Sequence[str] = (),
    check: bool = True,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export the predictor of the trained run ``run_dir`` to ``out`` in ``fmt`` and (``check``) compare the written
    file with the run's predictor on the example inputs and on inputs of other sizes.

    Refused before anything is loaded (ConfigError): an unknown format, ``out`` an existing directory or a file of
    the run directory, a method that does not export (predict), a missing package (named with its pip command).
    ExportError (one line) when the exporter fails or the check finds a difference above the tolerance; then no
    file is left at ``out`` (an existing one is kept).
    """
    from fewlabels.engine import load_run, read_run_config
    from fewlabels.engine.checkpoint import atomic_write
    from fewlabels.registry import get_method

    fmt = format_of(fmt, out)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigError("--tolerance", f"must be a number >= 0, got {tolerance}")
    target = check_out(out, run_dir)
    config = read_run_config(run_dir, overrides)
    method_class = get_method(config.method)
    if not method_class.exports():
        raise ConfigError("method", f"{config.method!r} runs do not predict, so there is nothing to export")
    missing = missing_packages(fmt, check)
    if missing:
        extra = " (or export with --no-check)" if set(missing) <= set(CHECK_PACKAGES.get(fmt, ())) else ""
        raise ConfigError(
            "--format",
            f"{fmt} export needs {', '.join(missing)}, which is not installed: pip install {' '.join(missing)} "
            f"(or pip install 'fewlabels[export]'){extra}",
        )
    run = load_run(run_dir, which=which, device=device, overrides=overrides)
    run.model.eval()
    with torch.no_grad():
        spec = run.method.export_module(run.model)
    metadata = export_metadata(spec, run.run_dir, config.method, run.weights, fmt)
    checks: list[CheckResult] = []

    def write_and_check(tmp: Path) -> None:  # a failed export or check leaves nothing, and any old file intact
        write_artefact(spec, fmt, tmp, metadata)
        if check:
            checks.extend(check_artefact(fmt, tmp, spec, tolerance))
            failed = [c for c in checks if not c.passed]
            if failed:
                worst = max(failed, key=lambda c: c.max_abs_diff)
                raise ExportError(
                    f"the {fmt} artefact differs from the run's predictor by {worst.max_abs_diff:.3g} on inputs "
                    f"{worst.shape_text()} (tolerance {worst.tolerance:.3g}); nothing was written to {out}"
                )

    atomic_write(target, write_and_check)  # with the mode the user's umask gives (safetensors writes 0600)
    return ExportResult(target, fmt, spec.description, target.stat().st_size, metadata, checks)
