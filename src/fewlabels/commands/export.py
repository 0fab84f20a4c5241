"""``fewlabels export``: a trained run's predictor as one ONNX, TorchScript or safetensors file.

Segmentation runs (supervised, cct, ac) export ``images -> class scores`` (dynamic batch, height and width), few-shot
runs (scl, scl-distill, protonet) their feature extractor (dynamic batch), text runs (relbitfit) their classifier
(dynamic batch and sequence length); :mod:`fewlabels.export` does the work and docs/export.md describes each artefact.
"""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def cmd_export(args: argparse.Namespace) -> int:
    """Write the artefact, print what was written and (``--check``, default) how far it is from the run's
    predictor."""
    from fewlabels.export import TOLERANCE, export_run

    result = export_run(
        args.run_dir,
        args.format,
        args.out,
        which=args.weights,
        device=args.device,
        overrides=args.overrides,
        check=args.check,
        tolerance=TOLERANCE if args.tolerance is None else args.tolerance,
    )
    print(result.summary())
    if result.checks:
        print(result.check_line())
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` (without importing torch: building the parser stays fast)."""
    p = subparsers.add_parser(
        "export",
        help="export a run's predictor to ONNX, TorchScript or safetensors",
        description=(
            "Write the predictor of RUN_DIR to --out FILE: segmentation runs (supervised, cct, ac) as images [N, C, "
            "H, W] in [0, 1] -> class scores [N, K, H, W] (N, H, W dynamic), few-shot runs (scl, scl-distill, "
            "protonet) as their feature extractor, relbitfit runs as their classifier (input_ids, attention_mask "
            "-> logits, batch and sequence length dynamic). The written file is run on the example inputs and on "
            "inputs of other sizes and compared with the run's own predictor (--no-check skips this). See "
            "docs/export.md."
        ),
    )
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. data.root=/elsewhere)")
    p.add_argument(
        "--format",
        metavar="FORMAT",
        help="onnx | torchscript | safetensors (default: from the suffix of --out: .onnx, .pt, .safetensors)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (outside the run directory)")
    p.add_argument("--weights", choices=["best", "last"], default="best")
    p.add_argument(
        "--device", choices=["cpu", "auto", "cuda"], default="cpu", help="device the export runs on (default: cpu)"
    )
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare the written file with the run's predictor (default: on; ONNX needs onnxruntime)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="the check fails above tolerance x max(1, max |predictor output|) (default: 1e-4)",
    )
    p.set_defaults(func=cmd_export)
