"""Weak labels for a CCT sweep: image-level labels from the masks, CAM pseudo-labels per seed, and their quality.

    python benchmarks/cct_weak.py --config digit_mosaics --fraction 0.02 --seeds 0 1 2 3 4 --out OUT --no-crf
    python benchmarks/cct_fractions.py --config digit_mosaics --fractions 0.02 --weak-labels OUT/seed{seed}/labels ...

The thesis' weakly semi-supervised setting: besides the few pixel-labeled images, every unlabeled image carries an
image-level label (the classes it contains). On a dataset with masks those labels are read from the masks, as the
reference reads VOC's from its segmentation masks; here every training image's label list goes to
``OUT/image_labels.json``. Then, per seed s (the split of ``data.labeled = --fraction`` drawn with
``data.split_seed = s``, as ``cct_fractions.py`` draws it), ``fewlabels cct-pseudo-labels`` trains the CAM classifier
on the unlabeled images' image labels (the reference recipe unless flags say otherwise; the config's encoder and
warm start) and writes ``OUT/seed<s>/labels/<id>.png``. Since a smaller labeled set is contained in a larger one for
the same seed, the folder of the smallest fraction serves every larger one.

The quality of each seed's pseudo-labels against the true masks of the same images (which training never reads) is
printed and stored in ``OUT/seed<s>/quality.json``: the share of pixels labeled (not 255), their pixel accuracy, and
the IoU per class over the labeled pixels with its mean. A seed whose folder is complete is not redone (``--fresh``
redoes it). The last stdout line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cct_ablation import config_path, read_config


def pseudo_label_quality(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore: int = 255) -> dict:
    """``pairs`` of (pseudo-label, true mask) ``[H, W]``: ``coverage`` (share of the true-labeled pixels that the
    pseudo-label does not ignore), ``accuracy`` over those pixels, ``iou`` per class over them (NaN for a class
    absent from both) and ``miou`` (their mean over the classes that occur)."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    total = covered = 0
    for pseudo, truth in pairs:
        valid = truth != ignore
        keep = valid & (pseudo != ignore)
        total += int(valid.sum())
        covered += int(keep.sum())
        idx = truth[keep].astype(np.int64) * num_classes + pseudo[keep].astype(np.int64)
        conf += np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    hit = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - hit
    iou = np.where(union > 0, hit / np.maximum(union, 1), np.nan)
    return {
        "coverage": covered / max(total, 1),
        "accuracy": float(hit.sum() / max(conf.sum(), 1)),
        "iou": [None if np.isnan(v) else round(float(v), 4) for v in iou],
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
    }


def training_images(cct: dict[str, Any]) -> Any:
    """Every training image of the config's dataset, with its mask: the config's data with all of them labeled."""
    from fewlabels.methods.segmentation.method import build_segmentation_data
    from fewlabels.registry import config_from_dict

    data = config_from_dict(cct).data
    split = build_segmentation_data(data)
    data.labeled = float(len(split.labeled) + len(split.unlabeled))
    return build_segmentation_data(data)


def pseudo_label_command(config: Path, fraction: float, seed: int, labels: Path, folder: Path, crf: bool) -> list[str]:
    """``fewlabels cct-pseudo-labels`` for one seed's split: a new CAM run in ``folder/cam``, or the one there
    (resumed when it stopped part-way, reused when it finished)."""
    cam = folder / "cam"
    if (cam / "model.safetensors").is_file():
        source = ["--from-run", str(cam)]
    else:
        source = ["--resume" if cam.is_dir() else "--run", str(cam)]
    command = [sys.executable, "-m", "fewlabels", "cct-pseudo-labels", str(config)]
    command += [f"data.labeled={fraction}", f"data.split_seed={seed}", f"seed={seed}"]
    command += ["--image-labels", str(labels), "--out", str(folder / "labels"), *source]
    return command + ([] if crf else ["--no-crf"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from PIL import Image

    from fewlabels.methods.cct.weak import image_id_and_side, image_labels_from_mask

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="digit_mosaics", help="configs/cct/<name>.yaml or a YAML path")
    parser.add_argument("--fraction", type=float, default=0.02, help="the sweep's smallest data.labeled")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="runs/cct_weak")
    parser.add_argument("--fresh", action="store_true", help="redo the seeds whose folder is complete")
    parser.add_argument("--no-crf", action="store_true", help="threshold the CAMs without the dense CRF")
    args = parser.parse_args(argv)
    cct = read_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = training_images(cct)
    images = data.labeled
    masks = {image_id_and_side(images, i)[0]: images.sample(i, None)["mask"].numpy() for i in range(len(images))}
    labels_path = out / "image_labels.json"
    multi_hot = {k: image_labels_from_mask(torch.from_numpy(m), data.num_classes) for k, m in masks.items()}
    present = {k: v.nonzero().flatten().tolist() for k, v in multi_hot.items()}
    labels_path.write_text(json.dumps(present))
    print(f"image-level labels of {len(present)} training images: {labels_path}")
    result: dict[str, Any] = {"config": args.config, "fraction": args.fraction, "crf": not args.no_crf, "seeds": {}}
    for seed in args.seeds:
        folder = out / f"seed{seed}"
        quality_path = folder / "quality.json"
        if quality_path.is_file() and not args.fresh:
            quality = json.loads(quality_path.read_text())
        else:
            command = pseudo_label_command(
                config_path(args.config), args.fraction, seed, labels_path, folder, not args.no_crf
            )
            subprocess.run(command, check=True)
            written = sorted((folder / "labels").glob("*.png"))
            pairs = [(np.asarray(Image.open(p)), masks[p.stem]) for p in written]
            quality = {"images": len(written), **pseudo_label_quality(pairs, data.num_classes)}
            quality_path.write_text(json.dumps(quality, indent=1))
        result["seeds"][seed] = quality
        print(
            f"seed {seed}: {quality['images']} pseudo-labels, coverage {quality['coverage']:.3f}, "
            f"accuracy {quality['accuracy']:.3f}, mIoU over the labeled pixels {quality['miou']:.3f}",
            flush=True,
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
