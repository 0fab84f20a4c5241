"""``fewlabels train | eval | predict | report``: train a run, then evaluate, predict with and report on it."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fewlabels.config import ConfigError

if TYPE_CHECKING:
    from fewlabels.data.base import DataError
    from fewlabels.engine.rundir import RunDirError

__all__ = ["add_commands"]


def _split_config_args(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """The config file and the ``key.sub=value`` overrides among ``train``'s positional arguments."""
    config, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise ConfigError(item, "only one config file may be given; overrides are written key.sub=value")
    return config, overrides


def cmd_train(args: argparse.Namespace) -> int:
    """Train from a config file, or continue ``--resume RUN_DIR``; print the run directory and final metrics."""
    from fewlabels.config import read_yaml
    from fewlabels.engine import read_run_config, train
    from fewlabels.engine.trainer import RESUMABLE_OVERRIDES
    from fewlabels.registry import load_config

    config_path, overrides = _split_config_args(args.args)
    if args.resume:
        saved = read_run_config(args.resume)
        if config_path is not None:
            method = read_yaml(config_path).get("method")
            if method != saved.method:
                raise ConfigError(
                    "method",
                    f"{args.resume} is a {saved.method!r} run but {config_path} configures {method!r}",
                )
        for item in overrides:
            key = item.split("=", 1)[0]
            if key not in RESUMABLE_OVERRIDES:
                raise ConfigError(
                    key,
                    f"cannot be changed when resuming (it would change the trajectory); allowed: "
                    f"{', '.join(RESUMABLE_OVERRIDES)}",
                )
        config = read_run_config(args.resume, overrides)
    else:
        if config_path is None:
            raise ConfigError("config", "give a config file (e.g. configs/supervised/scenes.yaml) or --resume RUN_DIR")
        config = load_config(config_path, overrides)
    result = train(config, args.resume)
    if result.is_main:  # under torchrun, one JSON result for the whole group
        print(json.dumps({"run_dir": str(result.run_dir), "steps": result.steps, "metrics": result.metrics}, indent=2))
    return 0


#: an override among ``predict``'s inputs: ``key.sub=value`` (a path that exists is an input, whatever its name)
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*=")


def _split_inputs(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``predict``'s input paths and its ``key.sub=value`` overrides."""
    inputs: list[str] = []
    overrides: list[str] = []
    for item in items:
        (overrides if _OVERRIDE.match(item) and not Path(item).exists() else inputs).append(item)
    return inputs, overrides


def _data_hint(error: Exception) -> DataError:
    from fewlabels.data.base import DataError

    first, _, rest = str(error).partition("\n")
    hint = " (this command reads the run's data: point to it with data.root=/path/to/data)"
    return DataError(first + hint + (f"\n{rest}" if rest else ""))


def _write_failed(what: Path, error: OSError, after: str = "") -> RunDirError:
    from fewlabels.engine.rundir import RunDirError

    reason = error.strerror or str(error)
    return RunDirError(f"cannot write {what}: {reason}{after}")


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a run's weights on its validation split; print and write ``eval_<weights>.json`` (the metrics are
    printed even when the run directory is read-only; the exit status then says the file was not written).

    The JSON records how it was obtained: the weights file, the device and the command line's overrides."""
    from fewlabels.data.base import DataError
    from fewlabels.engine import load_run

    run = load_run(args.run_dir, which=args.weights, device=args.device, overrides=args.overrides)
    try:
        metrics = run.evaluate()
    except DataError as e:
        raise _data_hint(e) from None
    out = {
        "run_dir": str(run.run_dir),
        "weights": run.weights.name,
        "device": str(run.device),
        "overrides": list(args.overrides),
        "metrics": metrics,
    }
    print(json.dumps(out, indent=2))
    target = run.run_dir / f"eval_{run.weights.stem}.json"
    try:
        target.write_text(json.dumps(out, indent=2))
    except OSError as e:
        raise _write_failed(target, e, "; the metrics are printed above") from None
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Write a run's predictions for files or folders into ``--out`` (which must lie outside every input)."""
    from fewlabels.engine import load_run

    if getattr(args, "support", None):  # few-shot runs: classify into the classes of the support folder
        from fewlabels.commands.fewshot import cmd_predict_fewshot

        return cmd_predict_fewshot(args)

    inputs, overrides = _split_inputs(args.inputs)
    if not inputs:
        raise ConfigError("INPUTS", "give at least one image file or folder to predict on")
    out = Path(args.out).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{args.out} is an existing file; --out names a folder for the predictions")
    for item in inputs:
        p = Path(item).resolve()
        if not p.exists():
            raise FileNotFoundError(f"input not found: {item}")
        if p.is_dir() and (out == p or p in out.parents):
            raise ConfigError("--out", f"{args.out} is inside the input folder {item}; choose a folder outside it")
    run = load_run(args.run_dir, which=args.weights, device=args.device, overrides=overrides)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = run.predict(inputs, out)
    except OSError as e:
        where = Path(e.filename).resolve() if isinstance(e.filename, str) else out
        if where not in (out, *out.parents) and out not in where.parents:
            raise  # not a write of --out or under it (an input that cannot be read): the CLI names the file
        raise _write_failed(where, e, f" (predictions go to --out {args.out}: choose a writable folder)") from None
    on_disk = sorted({p.resolve() for p in written if p.is_file()})
    print(f"wrote {len(on_disk)} files to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write a run's ``report.md`` with its curves, metrics and figures into ``--out`` (default: the run directory)."""
    from fewlabels.report import build_report

    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(
            "--out", f"{args.out} is an existing file; --out names a folder for report.md and its figures"
        )
    try:
        path = build_report(
            args.run_dir, device=args.device, overrides=args.overrides, which=args.weights, out_dir=args.out
        )
    except OSError as e:
        where = Path(e.filename) if isinstance(e.filename, str) else Path(args.out or args.run_dir)
        after = "; the report goes to --out (default: the run directory): choose a writable folder"
        raise _write_failed(where, e, after) from None
    print(f"report written to {path}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train``, ``eval``, ``predict`` and ``report``."""
    t = subparsers.add_parser(
        "train",
        help="train a method from a YAML config",
        description=(
            "Train from CONFIG with key.sub=value overrides, e.g. `fewlabels train configs/cct/voc_1464.yaml "
            "data.root=/data/VOC2012 train.steps=1000`. With --resume RUN_DIR the run continues exactly where its last "
            "valid checkpoint left it (only train.steps/epochs and logging intervals may change). Multi-GPU: "
            "`torchrun --nproc_per_node=N -m fewlabels train CONFIG`."
        ),
    )
    t.add_argument("args", nargs="*", metavar="CONFIG_OR_OVERRIDE", help="config file and key.sub=value overrides")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue this run directory")
    t.set_defaults(func=cmd_train)

    e = subparsers.add_parser(
        "eval",
        help="evaluate a run on its validation split",
        description="Metrics of the best (or last) weights of RUN_DIR on the validation split.",
    )
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. data.root=/elsewhere)")
    e.add_argument("--weights", choices=["best", "last"], default="best")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.set_defaults(func=cmd_eval)

    pr = subparsers.add_parser(
        "predict",
        help="predict on images/files with a trained run",
        description="Write predictions of RUN_DIR's model for INPUTS (files or folders) into --out.",
    )
    pr.add_argument("run_dir")
    pr.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT_OR_OVERRIDE",
        help="image files or folders (searched recursively; the tree is mirrored under --out), and key.sub=value "
        "overrides (e.g. data.root=/elsewhere)",
    )
    pr.add_argument(
        "--out", required=True, help="output folder (not inside an input folder; an input file is never overwritten)"
    )
    pr.add_argument("--weights", choices=["best", "last"], default="best")
    pr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    from fewlabels.commands.fewshot import add_predict_arguments

    add_predict_arguments(pr)
    pr.set_defaults(func=cmd_predict)

    r = subparsers.add_parser("report", help="write report.md with curves, metrics and figures for a run")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. data.root=/elsewhere)")
    r.add_argument(
        "--out",
        metavar="DIR",
        help="folder for report.md and report/ (default: the run directory, which may be read-only or someone else's)",
    )
    r.add_argument("--weights", choices=["best", "last"], default="best", help="weights the figures are drawn with")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    r.set_defaults(func=cmd_report)
