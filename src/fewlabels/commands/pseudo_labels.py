"""``fewlabels cct-pseudo-labels CONFIG --image-labels FILE.json --out DIR``: CCT's weak labels from image labels.

Two stages. The CAM classifier is a ``cct-cam`` run (:mod:`fewlabels.methods.cct.cam`) trained by the engine, so it
has progress lines, checkpoints, exact resume and SIGTERM handling like any training: by default this command
trains a new one (into ``--run DIR``, or ``<output_dir>/cct-cam-<time>``); ``--resume RUN`` continues an interrupted
one; ``--from-run RUN`` takes a trained one as it is. Then the pseudo-labels of the CCT config's unlabeled images are
written by :func:`fewlabels.methods.cct.weak.write_pseudo_labels` with the run's ``cam``/``crf`` settings (the
flags below override them).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_commands"]

#: flags that shape the classifier's training (refused with --from-run, and with --resume but for the budget)
_TRAINING_FLAGS = ("encoder", "batch_size", "lr", "crop_size")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) not in (None, "")]


def _training_values(args: argparse.Namespace) -> dict[str, Any]:
    """Nested config keys set by the flags (those given only)."""
    train: dict[str, Any] = {}
    if args.steps is not None:
        train.update(steps=args.steps, epochs=0.0)
    elif args.epochs is not None:
        train["epochs"] = args.epochs
    if args.batch_size is not None:
        train["batch_size"] = args.batch_size
    if args.lr is not None:
        train["lr"] = args.lr
    values: dict[str, Any] = {"train": train, "cam": {}, "crf": {}}
    if args.crop_size is not None:
        values["cam"]["crop_size"] = args.crop_size
    values["cam"].update(_writing_values(args)["cam"])
    values["crf"].update(_writing_values(args)["crf"])
    return values


def _writing_values(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    cam: dict[str, Any] = {}
    if args.scales is not None:
        cam["scales"] = list(args.scales)
    if args.fg_threshold is not None:
        cam["fg_threshold"] = args.fg_threshold
    if args.bg_threshold is not None:
        cam["bg_threshold"] = args.bg_threshold
    crf: dict[str, Any] = {}
    if args.crf is not None:
        crf["enabled"] = args.crf
    if args.crf_iterations is not None:
        crf["iterations"] = args.crf_iterations
    return {"cam": cam, "crf": crf}


def _train_losses(run_dir: Path) -> list[float]:
    from fewlabels.engine.monitor import read_metrics

    return [float(r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") == "train"]


def cmd_cct_pseudo_labels(args: argparse.Namespace) -> int:
    """Train (or resume, or reuse) a ``cct-cam`` run, then write ``<image id>.png`` pseudo-labels for the unlabeled
    images of a CCT config into ``--out``."""
    from fewlabels.config import ConfigError, build_config, to_dict
    from fewlabels.data.base import DataError
    from fewlabels.engine import load_run, read_run_config, train
    from fewlabels.methods.cct.cam import CCTCAMConfig, CCTCAMMethod, cam_config_from_cct
    from fewlabels.methods.cct.config import CCTConfig
    from fewlabels.methods.cct.weak import (
        CAMClassifier,
        background_class,
        image_id_and_side,
        read_image_labels,
        write_pseudo_labels,
    )
    from fewlabels.methods.segmentation.method import build_segmentation_data
    from fewlabels.registry import load_config

    config = load_config(args.config, args.overrides)
    if not isinstance(config, CCTConfig):
        raise DataError(f"{args.config} is a {config.method!r} config; pseudo-labels are written for cct configs")
    sources = [f for f, v in (("--run", args.run), ("--resume", args.resume), ("--from-run", args.from_run)) if v]
    if len(sources) > 1:
        raise ConfigError(sources[1], f"cannot be combined with {sources[0]}: give one CAM run to train or use")
    if args.steps is not None and args.epochs is not None:
        raise ConfigError("--steps", "give the budget as --steps or --epochs, not both")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{args.out} is an existing file; --out names a folder for the PNGs")

    existing = args.from_run or args.resume
    if existing:
        saved = read_run_config(existing)
        if saved.method != "cct-cam":
            raise ConfigError(
                "--from-run" if args.from_run else "--resume",
                f"{existing} is a {saved.method!r} run; give a cct-cam run (trained by this command)",
            )
        refused = _given(args, _TRAINING_FLAGS) + (_given(args, ("steps", "epochs")) if args.from_run else [])
        if refused:
            raise ConfigError(refused[0], f"changes the training of a run that exists ({existing}); omit it")
    if args.from_run:
        run_dir = Path(args.from_run)
        print(f"CAM classifier: {run_dir} (trained)")
    else:
        if args.resume:
            budget = _training_values(args)["train"]
            cam_config = read_run_config(args.resume, [f"train.{k}={v}" for k, v in budget.items()])
        else:
            cam_config = cam_config_from_cct(config, args.image_labels, args.encoder or "", _training_values(args))
            if args.run:
                target = Path(args.run)
                cam_config.output_dir, cam_config.name = str(target.parent), target.name
        result = train(cam_config, args.resume)
        run_dir = result.run_dir
        losses = _train_losses(run_dir)
        summary = f", BCE {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
        print(f"CAM classifier: {run_dir} ({result.steps} steps{summary})")

    run = load_run(run_dir, which="last", device=args.device)
    assert isinstance(run.method, CCTCAMMethod) and isinstance(run.model, CAMClassifier)
    # The run's writing settings, with this command's flags on top.
    settings = to_dict(run.config)
    for section, values in _writing_values(args).items():
        settings[section].update(values)
    cam_config = build_config(CCTCAMConfig, settings)
    data = build_segmentation_data(config.data)
    classifier_classes = run.method.num_classes
    if data.num_classes != classifier_classes:
        raise DataError(
            f"{args.config} has {data.num_classes} classes but the CAM classifier of {run_dir} scores "
            f"{classifier_classes}; train it on this config's data"
        )
    chosen = config.perturbations.background_classes or (
        [cam_config.cam.background_class] if cam_config.cam.background_class >= 0 else []
    )
    background = background_class(chosen, data.num_classes, data.thing_classes)
    images = data.unlabeled
    ids = [image_id_and_side(images, i)[0] for i in range(len(images))]
    labels = read_image_labels(args.image_labels, ids, data.num_classes)
    written = write_pseudo_labels(
        run.model,
        images,
        labels,
        out,
        background,
        tuple(cam_config.cam.scales),
        cam_config.cam.fg_threshold,
        cam_config.cam.bg_threshold,
        run.device,
        flip=cam_config.cam.flip,
        crf=cam_config.crf,
    )
    crf = f"dense CRF, {cam_config.crf.iterations} iterations" if cam_config.crf.enabled else "no CRF"
    print(f"wrote {len(written)} pseudo-labels to {out} ({crf}); train with weak.labels_dir={out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cct-pseudo-labels``."""
    p = subparsers.add_parser(
        "cct-pseudo-labels",
        help="CAM pseudo-labels from image-level labels (CCT weak labels)",
        description=(
            "Train a CAM classifier (a cct-cam run: progress, checkpoints, resume) on the unlabeled images of CONFIG "
            "with their image-level labels, then write one pseudo-label PNG per image into --out. Defaults are the "
            "reference recipe (ResNet-50 as `--encoder resnet50`, SGD lr 0.1, 5 epochs, batch 16, crop 512, CRF on); "
            "see docs/weak_labels.md."
        ),
    )
    p.add_argument("config", help="the CCT config whose unlabeled images get pseudo-labels")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the CCT config")
    p.add_argument("--image-labels", required=True, help="JSON {image id: [class, ...]} of the unlabeled images")
    p.add_argument("--out", required=True, help="folder for <image id>.png")
    run = p.add_argument_group("the CAM run (default: a new one in <output_dir>/cct-cam-<time>)")
    run.add_argument("--run", metavar="DIR", help="train a new CAM run into DIR")
    run.add_argument("--resume", metavar="RUN", help="continue the interrupted CAM run RUN, then write")
    run.add_argument("--from-run", metavar="RUN", help="use the trained CAM run RUN (no training)")
    tr = p.add_argument_group("training (defaults: the reference recipe)")
    tr.add_argument(
        "--encoder",
        default=None,
        help="classifier encoder (default: the config's model.encoder with its deep_stem and pretrained weights; "
        "the reference: resnet50)",
    )
    tr.add_argument("--epochs", type=float, default=None, help="passes over the images (default 5)")
    tr.add_argument("--steps", type=int, default=None, help="optimizer steps instead of epochs (small runs)")
    tr.add_argument("--batch-size", type=int, default=None, help="default 16")
    tr.add_argument("--lr", type=float, default=None, help="backbone lr, classifier x10 (default 0.1)")
    tr.add_argument("--crop-size", type=int, default=None, help="default 512, at most the longest image side")
    wr = p.add_argument_group("pseudo-labels (defaults: the CAM run's cam and crf sections)")
    wr.add_argument("--scales", type=float, nargs="+", default=None, help="default 1 0.5 1.5 2")
    wr.add_argument("--fg-threshold", type=float, default=None, help="default 0.30")
    wr.add_argument("--bg-threshold", type=float, default=None, help="default 0.05")
    wr.add_argument(
        "--crf", action=argparse.BooleanOptionalAction, default=None, help="dense CRF refinement (default: on)"
    )
    wr.add_argument("--crf-iterations", type=int, default=None, help="mean-field iterations (default 10)")
    wr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the labels are computed")
    p.set_defaults(func=cmd_cct_pseudo_labels)
