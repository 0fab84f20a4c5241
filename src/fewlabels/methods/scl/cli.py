"""``fewlabels fewshot-eval RUN_DIR``: the episodic test protocol on a trained few-shot run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cmd_fewshot_eval(args: argparse.Namespace) -> int:
    from fewlabels.config import ConfigError
    from fewlabels.engine import load_run
    from fewlabels.methods.scl.fewshot_eval import fewshot_evaluate
    from fewlabels.methods.scl.method import FewShotMethod

    run = load_run(args.run_dir, which=args.weights, device=args.device, overrides=args.overrides)
    if not isinstance(run.method, FewShotMethod):
        raise ConfigError(
            "run_dir", f"{args.run_dir} is a {run.config.method!r} run; fewshot-eval needs a few-shot run"
        )
    dataset = run.method.split(args.split)
    result = fewshot_evaluate(
        run.model,
        dataset,
        shots=tuple(args.shots),
        ways=args.ways,
        queries=args.queries,
        episodes=args.episodes,
        seed=args.seed,
        classifier=args.classifier,
        exact=args.exact,
        device=run.device,
        support_augment=args.support_augment,
    )
    result.update(split=args.split, weights=str(run.weights))
    for k in args.shots:
        print(
            f"{args.ways}-way {k}-shot: {result[f'acc_{k}shot']:.2f} +- {result[f'ci95_{k}shot']:.2f} "
            f"({args.episodes} episodes, {args.split} split)"
        )
    out = Path(args.out) if args.out else Path(args.run_dir) / f"fewshot_eval_{args.split}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshot-eval``: mean accuracy +- 95% CI over seeded N-way K-shot episodes."""
    p = subparsers.add_parser(
        "fewshot-eval",
        help="episodic few-shot evaluation of a trained run (mean accuracy +- 95% CI)",
        description="Linear probe (or nearest centroid) per episode on frozen features of RUN_DIR's model.",
    )
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. data.root=/elsewhere)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--classifier", choices=["lr", "nc"], default="lr")
    p.add_argument("--exact", action="store_true", help="scikit-learn per episode instead of the batched solver")
    p.add_argument("--support-augment", type=int, default=0, help="augmented copies per support image")
    p.add_argument("--weights", choices=["best", "last"], default="best")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", default="", help="JSON output (default RUN_DIR/fewshot_eval_<split>.json)")
    p.set_defaults(func=_cmd_fewshot_eval)
