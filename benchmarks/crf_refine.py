"""Dense-CRF refinement of one pseudo-label (the weak-label workflow's cost per image), as it is and as it was.

A pseudo-label refines two thresholded label maps of the same image (``cams_to_pseudo_label``). Timed on a generated
image with its two maps (default 96 x 96, 4 labels, the reference's CRF settings: 10 iterations, the approximate
bilateral kernel above 4,096 pixels), in alternating rounds in one process:

* ``together``: the project's path, both maps in one ``crf_refine_labels`` call (the kernels are built once, and
  each iteration passes over them once for both maps);
* ``separate``: one call per map (each builds its own kernels), the path before session 19;
* ``before``: ``separate`` with the kernel matrix built as before session 19 (separate temporaries for the squared
  distances and the exponential), patched in for its rounds only.

The separate calls' labels are checked to equal the joint call's. The figures are medians over rounds of the
per-round ratio ``before / together`` and ``separate / together`` (wall clock; CPU time beside it), and the seconds
per image of each path. The last stdout line is a JSON object.

    python benchmarks/crf_refine.py [--side 96] [--labels 4] [--rounds 7] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch


def old_gaussian_matrix(fq: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    """The kernel matrix as built before session 19: squared distances then ``exp``, each a new tensor."""
    sq = (fq * fq).sum(1)
    d2 = (sq[:, None] + (fs * fs).sum(1)[None] - 2.0 * fq @ fs.T).clamp_min_(0.0)
    return torch.exp(-0.5 * d2)


def scene(side: int, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image in [0, 1] with ``n_labels`` colour blocks and two noisy label maps of it ``[2, side, side]``."""
    g = torch.Generator().manual_seed(0)
    truth = (torch.arange(side)[None, :] * n_labels // side).expand(side, side)
    image = torch.rand(3, n_labels, generator=g)[:, truth] * 0.8 + torch.rand(3, side, side, generator=g) * 0.2
    maps = []
    for p in (0.2, 0.4):
        noise = torch.randint(0, n_labels, (side, side), generator=g)
        maps.append(torch.where(torch.rand(side, side, generator=g) < p, noise, truth))
    return image, torch.stack(maps)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, float, torch.Tensor]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main(argv: list[str] | None = None) -> dict[str, float]:
    from fewlabels.methods.cct import crf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--labels", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    image, maps = scene(args.side, args.labels)
    settings = crf.CRFSettings()
    new_matrix = crf._gaussian_matrix

    def together() -> torch.Tensor:
        return crf.crf_refine_labels(image, maps, args.labels, settings)

    def separate() -> torch.Tensor:
        return torch.stack([crf.crf_refine_labels(image, m, args.labels, settings) for m in maps])

    def before() -> torch.Tensor:
        crf._gaussian_matrix = old_gaussian_matrix
        try:
            return separate()
        finally:
            crf._gaussian_matrix = new_matrix

    paths = {"together": together, "separate": separate, "before": before}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    reference = together()  # warm-up
    for _ in range(args.rounds):
        for name, fn in paths.items():
            wall, cpu, out = timed(fn)
            if not torch.equal(out, reference):
                raise SystemExit(f"{name}: the refined labels differ from the joint call's")
            times[name].append((wall, cpu))

    def ratio(a: str, i: int) -> float:
        return statistics.median(x[i] / y[i] for x, y in zip(times[a], times["together"], strict=True))

    result = {
        "before_over_together": round(ratio("before", 0), 3),
        "before_over_together_cpu": round(ratio("before", 1), 3),
        "separate_over_together": round(ratio("separate", 0), 3),
        "separate_over_together_cpu": round(ratio("separate", 1), 3),
        **{f"{name}_s": round(statistics.median(t[0] for t in times[name]), 4) for name in paths},
    }
    print(f"one pseudo-label ({args.side} x {args.side}, {args.labels} labels, two maps), {args.rounds} rounds:")
    for name in paths:
        print(f"  {name:9s} {result[f'{name}_s']:.3f} s")
    print(f"  before / together {result['before_over_together']:.2f}x (CPU {result['before_over_together_cpu']:.2f}x)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
