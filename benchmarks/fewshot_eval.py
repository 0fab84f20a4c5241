"""Episodic evaluation speed: the reference protocol vs the fast batched path, on the same episodes.

Reference (RFS/SCL): for every episode, run the backbone on the episode's support and query images, then fit
one scikit-learn ``LogisticRegression(C=1)`` per feature type (pooled, 2x2 spatial) and sum the probabilities.
Fast path (``fewshot_evaluate``): extract every image's features once, then solve all episodes' logistic
regressions together (batched Newton-CG in the span of the support features).

Default model: a conv-4 on the embedded glyphs novel split (random init, or ``--run RUN_DIR`` for a trained
run). The last stdout line is a JSON object with ``speedup`` (reference time / fast time, both shots together)
and ``accuracy_gap`` (largest |fast - reference| mean accuracy over the shots, in points) next to the 95% CIs,
``eval_over_backbone`` (the whole fast evaluation over one backbone pass over the split's images: the
moonshot asks <= 1.3 for 600 episodes) and the solver's thread count (``solver_threads``, chosen for the work
by ``fewshot_eval.solver_thread_count``).

``--load N`` also times the classifiers (the batched solver, and scikit-learn per episode) on the same
features while N busy processes compete for the cores, and with the solver forced onto every torch thread
(what the fast path did before it chose its thread count): ``*_under_load`` and ``*_slowdown`` keys.

    python benchmarks/fewshot_eval.py --episodes 100 --shots 1 5 --load 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch


def _model(run: str, backbone: str, image_size: int) -> torch.nn.Module:
    if run:
        from fewlabels.engine import load_run

        return load_run(run, device="cpu").model
    from fewlabels.methods.scl.backbones import build_backbone
    from fewlabels.methods.scl.model import SCLNet

    torch.manual_seed(0)
    return SCLNet(build_backbone(backbone, image_size=image_size), num_classes=64).eval()


@contextlib.contextmanager
def _busy(processes: int) -> Iterator[None]:
    """``processes`` busy-looping Python processes (another user's work on the cores) for the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _classifier_times(model: torch.nn.Module, dataset: object, args: argparse.Namespace) -> dict[str, float]:
    """Seconds of the classifiers alone (features extracted beforehand) for every shot: the batched solver with
    its chosen thread count, the batched solver on every torch thread, scikit-learn per episode."""
    from fewlabels.data.episodes import EpisodeSampler
    from fewlabels.methods.scl import fewshot_eval as fe

    feats = fe.extract_features(model, dataset, "cpu")  # type: ignore[arg-type]
    episodes = [
        EpisodeSampler(feats.labels, args.ways, k, args.queries, args.episodes, args.seed).as_arrays()[1:]
        for k in args.shots
    ]

    def solve(exact: bool) -> None:
        for support, query in episodes:
            fe.episode_accuracies(feats, support, query, exact=exact)

    chosen = _seconds(lambda: solve(False))
    keep = fe.WORK_PER_THREAD
    fe.WORK_PER_THREAD = 1  # every available thread, whatever the work
    try:
        all_threads = _seconds(lambda: solve(False))
    finally:
        fe.WORK_PER_THREAD = keep
    return {"solver_s": chosen, "solver_all_threads_s": all_threads, "sklearn_s": _seconds(lambda: solve(True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--backbone", default="conv4", choices=["conv4", "resnet12", "resnet18"])
    parser.add_argument("--run", default="", help="use the model of this run directory instead of a random conv-4")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load", type=int, default=0, help="also time the classifiers next to N busy processes")
    args = parser.parse_args()
    from fewlabels.engine.allocator import keep_freed_memory

    keep_freed_memory()  # as the training engine does on CPU (fewlabels.engine.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)

    import fewlabels.methods.scl  # noqa: F401  (registers the methods for --run)
    from fewlabels.data.glyphs import GlyphsDataset
    from fewlabels.methods.scl.fewshot_eval import (
        extract_features,
        fewshot_evaluate,
        reference_protocol_evaluate,
        solver_thread_count,
    )
    from fewlabels.metrics import mean_confidence_interval

    dataset = GlyphsDataset("novel", image_size=32, per_class=24)
    model = _model(args.run, args.backbone, 32)
    print(
        f"glyphs novel: {len(dataset)} images, {dataset.num_classes} classes; {args.ways}-way, "
        f"{args.queries} queries, {args.episodes} episodes; torch threads {torch.get_num_threads()}"
    )

    ref_time, ref = 0.0, {}
    for k in args.shots:
        start = time.perf_counter()
        accs = reference_protocol_evaluate(model, dataset, k, args.ways, args.queries, args.episodes, args.seed)
        ref_time += time.perf_counter() - start
        ref[k] = mean_confidence_interval(torch.from_numpy(accs * 100))
        print(f"reference {k}-shot: {ref[k][0]:.2f} +- {ref[k][1]:.2f}")
    print(f"reference protocol: {ref_time:.2f} s")

    start = time.perf_counter()
    fast = fewshot_evaluate(
        model,
        dataset,
        shots=tuple(args.shots),
        ways=args.ways,
        queries=args.queries,
        episodes=args.episodes,
        seed=args.seed,
        device="cpu",
    )
    fast_time = time.perf_counter() - start
    for k in args.shots:
        print(f"fast      {k}-shot: {fast[f'acc_{k}shot']:.2f} +- {fast[f'ci95_{k}shot']:.2f}")
    print(f"fast path: {fast_time:.2f} s")

    backbone_time = min(_seconds(lambda: extract_features(model, dataset, "cpu")) for _ in range(2))
    print(f"one backbone pass over the {len(dataset)} images: {backbone_time:.2f} s")
    n = args.ways * max(args.shots)
    threads = solver_thread_count(torch.zeros(args.episodes, n, 1), args.ways)
    loaded: dict[str, float] = {}
    if args.load:
        quiet = _classifier_times(model, dataset, args)
        with _busy(args.load):
            busy = _classifier_times(model, dataset, args)
        for key in quiet:
            name = key.removesuffix("_s")
            loaded[key] = round(quiet[key], 3)
            loaded[f"{name}_under_load_s"] = round(busy[key], 3)
            loaded[f"{name}_slowdown"] = round(busy[key] / quiet[key], 2)
            print(f"{name}: {quiet[key]:.2f} s, next to {args.load} busy processes {busy[key]:.2f} s")

    gaps = {k: abs(fast[f"acc_{k}shot"] - ref[k][0]) for k in args.shots}
    result = {
        "speedup": round(ref_time / fast_time, 2),
        "accuracy_gap": round(max(gaps.values()), 3),
        "gap_inside_ci": bool(all(gaps[k] <= ref[k][1] for k in args.shots)),
        "reference_s": round(ref_time, 3),
        "fast_s": round(fast_time, 3),
        "episodes": args.episodes,
        "threads": torch.get_num_threads(),
        "solver_threads": threads,
        "backbone_pass_s": round(backbone_time, 3),
        "eval_over_backbone": round(fast_time / backbone_time, 2),
        **loaded,
        **{f"acc_{k}shot_reference": round(ref[k][0], 3) for k in args.shots},
        **{f"acc_{k}shot_fast": round(float(fast[f"acc_{k}shot"]), 3) for k in args.shots},
        **{f"ci95_{k}shot": round(ref[k][1], 3) for k in args.shots},
        "accuracy_gaps": {str(k): round(float(np.float64(v)), 3) for k, v in gaps.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
