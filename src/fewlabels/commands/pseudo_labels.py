"""``fewlabels cct-pseudo-labels CONFIG --image-labels FILE.json --out DIR``: CCT's weak labels from image labels.

The computation (CAM classifier, multi-scale CAMs, thresholds) is :mod:`fewlabels.methods.cct.weak`; this module
reads the config and the flags and reports what was written.
"""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def cmd_cct_pseudo_labels(args: argparse.Namespace) -> int:
    """Write ``<image id>.png`` pseudo-labels for the unlabeled images of a CCT config into ``--out``."""
    from fewlabels.data.base import DataError
    from fewlabels.methods.cct.config import CCTConfig
    from fewlabels.methods.cct.weak import CAMSettings, pseudo_labels_from_image_labels
    from fewlabels.registry import load_config

    config = load_config(args.config, args.overrides)
    if not isinstance(config, CCTConfig):
        raise DataError(f"{args.config} is a {config.method!r} config; pseudo-labels are written for cct configs")
    settings = CAMSettings(
        encoder=args.encoder,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        scales=tuple(args.scales),
        fg_threshold=args.fg_threshold,
        bg_threshold=args.bg_threshold,
    )
    result = pseudo_labels_from_image_labels(config, args.image_labels, args.out, settings)
    print(f"CAM classifier: BCE {result.losses[0]:.3f} -> {result.losses[-1]:.3f} over {args.steps} steps")
    print(f"wrote {len(result.written)} pseudo-labels to {args.out}; train with weak.labels_dir={args.out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cct-pseudo-labels``."""
    p = subparsers.add_parser("cct-pseudo-labels", help="CAM pseudo-labels from image-level labels (CCT weak labels)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--image-labels", required=True, help="JSON {image id: [class, ...]} of the unlabeled images")
    p.add_argument("--out", required=True, help="folder for <image id>.png")
    p.add_argument(
        "--encoder",
        default="",
        help="classifier encoder (default: the config's model.encoder, with its deep_stem and pretrained weights)",
    )
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0])
    p.add_argument("--fg-threshold", type=float, default=0.30)
    p.add_argument("--bg-threshold", type=float, default=0.05)
    p.set_defaults(func=cmd_cct_pseudo_labels)
