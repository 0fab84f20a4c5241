"""Command line: ``fewlabels train | eval | predict | data check | demo | report | methods | ...``.

Every command validates its inputs before heavy work and reports problems as one ``error:`` line naming what was
wrong and what to do (exit status 2); a diverged run exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fewlabels.config import ConfigError


def _split_config_args(items: Sequence[str]) -> tuple[str | None, list[str]]:
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
    print(json.dumps({"run_dir": str(result.run_dir), "steps": result.steps, "metrics": result.metrics}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fewlabels.engine import load_run

    run = load_run(args.run_dir, which=args.weights, device=args.device, overrides=args.overrides)
    metrics = run.evaluate()
    out = {"run_dir": str(run.run_dir), "weights": run.weights.name, "metrics": metrics}
    (run.run_dir / f"eval_{run.weights.stem}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fewlabels.engine import load_run

    out = Path(args.out).resolve()
    for item in args.inputs:
        p = Path(item).resolve()
        if not p.exists():
            raise FileNotFoundError(f"input not found: {item}")
        if p.is_dir() and (out == p or p in out.parents):
            raise ConfigError("--out", f"{args.out} is inside the input folder {item}; choose a folder outside it")
    run = load_run(args.run_dir, which=args.weights, device=args.device)
    written = run.predict(args.inputs, out)
    print(f"wrote {len(written)} files to {out}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from fewlabels.data.check import check_dataset

    report = check_dataset(args.kind, args.root)
    print(report.format())
    return 0 if report.ok else 1


def cmd_methods(args: argparse.Namespace) -> int:
    from fewlabels.config import describe
    from fewlabels.registry import available_methods, get_method

    if args.name:
        cls = get_method(args.name)
        print(f"{cls.name}: {cls.description}\n")
        for key, tp, default, help_text in describe(cls.config_class):
            print(f"  {key:<36} {tp:<28} default={default!r}  {help_text}")
        return 0
    for name, cls in available_methods().items():
        print(f"{name:<14} {cls.description}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fewlabels.report import build_report

    path = build_report(args.run_dir, device=args.device)
    print(f"report written to {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fewlabels.demo import run_demo

    run_demo(out_dir=args.out, methods=args.method, minutes=args.minutes, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fewlabels import __version__

    p = argparse.ArgumentParser(prog="fewlabels", description="Deep learning with few labels: CCT, AC, SCL, RelBitFit.")
    p.add_argument("--version", action="version", version=f"fewlabels {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
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

    e = sub.add_parser(
        "eval",
        help="evaluate a run on its validation split",
        description="Metrics of the best (or last) weights of RUN_DIR on the validation split.",
    )
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. data.root=/elsewhere)")
    e.add_argument("--weights", choices=["best", "last"], default="best")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser(
        "predict",
        help="predict on images/files with a trained run",
        description="Write predictions of RUN_DIR's model for INPUTS (files or folders) into --out.",
    )
    pr.add_argument("run_dir")
    pr.add_argument("inputs", nargs="+")
    pr.add_argument("--out", required=True, help="output folder (must not be inside an input folder)")
    pr.add_argument("--weights", choices=["best", "last"], default="best")
    pr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pr.set_defaults(func=cmd_predict)

    d = sub.add_parser("data", help="dataset utilities")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    dc = dsub.add_parser(
        "check",
        help="validate a dataset layout and print counts",
        description="Check that ROOT holds a dataset of KIND in its expected layout.",
    )
    dc.add_argument("kind")
    dc.add_argument("root")
    dc.set_defaults(func=cmd_data_check)

    m = sub.add_parser("methods", help="list registered methods (or the config keys of one)")
    m.add_argument("name", nargs="?", help="show every config key of this method with its default")
    m.set_defaults(func=cmd_methods)

    r = sub.add_parser("report", help="write report.md with curves, metrics and figures for a run")
    r.add_argument("run_dir")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    r.set_defaults(func=cmd_report)

    dm = sub.add_parser("demo", help="offline demo of the methods on embedded data, with a report")
    dm.add_argument("--method", action="append", help="run only this method (repeatable)")
    dm.add_argument("--minutes", type=float, default=None, help="scale the time budget")
    dm.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    dm.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    dm.set_defaults(func=cmd_demo)

    from fewlabels.methods import extend_cli

    extend_cli(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from fewlabels.data.base import DataError
    from fewlabels.engine import CheckpointError, RunDirError, TrainingDiverged

    try:
        return int(args.func(args))
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, DataError, RunDirError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
