"""``fewlabels fewshot-eval RUN_DIR``: the episodic test protocol on a trained few-shot run.

The protocol comes from the run's own config (its ``eval`` section in config.yaml); each flag the user gives
replaces one key of it, exactly as the override ``eval.<key>=<value>`` would, so ``--episodes 50`` and
``eval.episodes=50`` are the same request and a flag left out never replaces what the run configured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewlabels.config import ConfigError

__all__ = ["add_commands", "eval_overrides"]

#: flags that stand for keys of the run's ``eval`` section (argparse destination = key name)
EVAL_FLAGS: tuple[str, ...] = ("shots", "ways", "queries", "episodes", "seed", "classifier", "exact", "support_augment")


def eval_overrides(args: argparse.Namespace) -> list[str]:
    """``eval.<key>=<value>`` overrides for the protocol flags the user gave (those that are not ``None``)."""
    return [f"eval.{key}={json.dumps(getattr(args, key))}" for key in EVAL_FLAGS if getattr(args, key) is not None]


def cmd_fewshot_eval(args: argparse.Namespace) -> int:
    """Evaluate RUN_DIR on seeded episodes of a split; print one line per shot and write the JSON result."""
    from fewlabels.engine import load_run, read_run_config
    from fewlabels.methods.scl.config import FewShotConfig
    from fewlabels.methods.scl.fewshot_eval import evaluate_split
    from fewlabels.methods.scl.method import FewShotMethod

    # The kind of run is checked before the eval.* overrides are added: only a few-shot config has those keys.
    saved = read_run_config(args.run_dir, args.overrides)
    not_few_shot = f"{args.run_dir} is a {saved.method!r} run; fewshot-eval needs a few-shot run"
    if not isinstance(saved, FewShotConfig):
        raise ConfigError("run_dir", not_few_shot)
    overrides = [*args.overrides, *eval_overrides(args)]
    run = load_run(args.run_dir, which=args.weights, device=args.device, overrides=overrides)
    if not isinstance(run.method, FewShotMethod):
        raise ConfigError("run_dir", not_few_shot)
    protocol = run.method.config.eval
    result = evaluate_split(run.method, run.model, args.split, protocol, device=run.device)
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
    p.add_argument("--weights", choices=["best", "last"], default="best")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", default="", help="JSON output (default RUN_DIR/fewshot_eval_<split>.json)")
    p.set_defaults(func=cmd_fewshot_eval)
