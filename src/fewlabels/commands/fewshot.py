"""``fewlabels fewshot-eval RUN_DIR``: the episodic test protocol on a trained few-shot run.

The protocol comes from the run's own config (its ``eval`` section in config.yaml); each flag the user gives
replaces one key of it, exactly as the override ``eval.<key>=<value>`` would, so ``--episodes 50`` and
``eval.episodes=50`` are the same request and a flag left out never replaces what the run configured.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from fewlabels.config import ConfigError

__all__ = ["add_commands", "add_predict_arguments", "cmd_predict_fewshot", "eval_overrides", "prediction_csv"]

#: flags that stand for keys of the run's ``eval`` section (argparse destination = key name)
EVAL_FLAGS: tuple[str, ...] = (
    "shots",
    "ways",
    "queries",
    "episodes",
    "seed",
    "classifier",
    "exact",
    "support_augment",
    "features",
)


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*=")


def eval_overrides(args: argparse.Namespace) -> list[str]:
    """``eval.<key>=<value>`` overrides for the protocol flags the user gave (those that are not ``None``)."""
    return [f"eval.{key}={json.dumps(getattr(args, key))}" for key in EVAL_FLAGS if getattr(args, key) is not None]


def cmd_fewshot_eval(args: argparse.Namespace) -> int:
    """Evaluate RUN_DIR on seeded episodes of a split; print one line per shot and write the JSON result."""
    from fewlabels import load_fewshot_run
    from fewlabels.methods.scl.config import FewShotConfig
    from fewlabels.methods.scl.fewshot_eval import evaluate_split
    from fewlabels.methods.scl.method import FewShotMethod

    # The kind of run is checked (on the saved config) before the eval.* overrides are added: only a few-shot
    # config has those keys. The training split is never read: data.* may name a folder of test classes only.
    overrides = [*args.overrides, *eval_overrides(args)]
    run = load_fewshot_run(args.run_dir, which=args.weights, device=args.device, overrides=overrides)
    assert isinstance(run.method, FewShotMethod)
    method: FewShotMethod[FewShotConfig] = run.method
    protocol = method.config.eval
    result = evaluate_split(method, run.model, args.split, protocol, device=run.device)
    result.update(weights=str(run.weights))
    for k in protocol.shots:
        print(
            f"{protocol.ways}-way {k}-shot: {result[f'acc_{k}shot']:.2f} +- {result[f'ci95_{k}shot']:.2f} "
            f"({protocol.episodes} episodes, {args.split} split)"
        )
    out = Path(args.out) if args.out else Path(args.run_dir) / f"fewshot_eval_{args.split}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fewshot-eval``: mean accuracy +- 95% CI over seeded N-way K-shot episodes."""
    p = subparsers.add_parser(
        "fewshot-eval",
        help="episodic few-shot evaluation of a trained run (mean accuracy +- 95%% CI)",
        description=(
            "Linear probe (or nearest centroid) per episode on frozen features of RUN_DIR's model. The protocol is "
            "the eval section of RUN_DIR/config.yaml; each flag given replaces one of its keys (--episodes N is "
            "eval.episodes=N)."
        ),
    )
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. data.root=/elsewhere)")
    p.add_argument("--shots", type=int, nargs="+", default=None, help="support images per class (eval.shots)")
    p.add_argument("--ways", type=int, default=None, help="classes per episode (eval.ways)")
    p.add_argument("--queries", type=int, default=None, help="query images per class (eval.queries)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per number of shots (eval.episodes)")
    p.add_argument("--seed", type=int, default=None, help="episode seed (eval.seed)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--classifier", choices=["lr", "nc"], default=None, help="lr or nc (eval.classifier)")
    p.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scikit-learn per episode instead of the batched solver (eval.exact)",
    )
    p.add_argument(
        "--support-augment", type=int, default=None, help="augmented copies per support image (eval.support_augment)"
    )
    p.add_argument(
        "--features",
        choices=["both", "pooled", "spatial"],
        default=None,
        help="feature types, one classifier each, probabilities summed (eval.features)",
    )
    p.add_argument(
        "--weights",
        choices=["best", "last"],
        default="last",
        help="last (the reference's protocol, default) or best on the validation episodes",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", default="", help="JSON output (default RUN_DIR/fewshot_eval_<split>.json)")
    p.set_defaults(func=cmd_fewshot_eval)


def prediction_csv(out: str, support: str, inputs: list[str]) -> Path:
    """The CSV that ``predict --support`` writes: ``--out`` itself if it ends in ``.csv``, else
    ``OUT/fewshot_predictions.csv``; refused (ConfigError) when it lies inside the support folder or a query folder,
    or is one of their files or a query file (the same path once resolved, a symlink or a hard link to one)."""
    from fewlabels.data.common import InputFiles

    given = Path(out)
    target = (given if given.suffix.lower() == ".csv" else given / "fewshot_predictions.csv").resolve()
    items = [Path(item) for item in [support, *inputs]]
    folders = [p for p in items if p.is_dir()]
    files = [p for p in items if not p.is_dir()] + [f for d in folders for f in d.rglob("*") if f.is_file()]
    sources = InputFiles(files, folders)
    inside = sources.folder_of(target)
    if inside is not None:
        raise ConfigError("--out", f"{target} would be written into the input {inside}; choose a path outside it")
    source = sources.overwritten_by(target)
    if source is not None:
        raise ConfigError("--out", f"{target} would overwrite the input file {source}; choose a path outside them")
    return target


def cmd_predict_fewshot(args: argparse.Namespace) -> int:
    """``predict RUN --support DIR QUERIES --out OUT``: classify the queries into the support folder's classes."""
    from fewlabels import fewshot_predict

    # key.sub=value items among the inputs are overrides (``predict``'s convention), unless such a file exists
    inputs = [i for i in args.inputs if not _OVERRIDE.match(i) or Path(i).exists()]
    overrides = [i for i in args.inputs if i not in inputs]
    if not inputs:
        raise ConfigError("INPUTS", "give at least one query image file or folder")
    target = prediction_csv(args.out, args.support, inputs)
    if getattr(args, "exact", False):
        overrides.append("eval.exact=true")
    result = fewshot_predict(
        args.run_dir, args.support, inputs, which=args.weights, device=args.device, overrides=overrides
    )
    result.write_csv(target)
    shots = ", ".join(f"{c}: {n}" for c, n in result.shots.items())
    counts = ", ".join(f"{c}: {n}" for c, n in result.counts().items())
    print(f"{len(result.classes)}-way support ({shots})")
    print(f"{len(result.paths)} queries predicted as {counts}")
    print(f"wrote {target}")
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """``--support`` and ``--exact`` of ``predict`` (few-shot runs: scl, scl-distill, protonet)."""
    parser.add_argument(
        "--support",
        metavar="SUPPORT_DIR",
        default=None,
        help="few-shot runs: labelled examples, one sub-folder of images per class; the inputs are classified into "
        "these classes (CSV at --out, or OUT/fewshot_predictions.csv)",
    )
    parser.add_argument(
        "--exact", action="store_true", help="with --support: scikit-learn instead of the batched solver"
    )
