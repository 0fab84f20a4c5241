"""Few-shot prediction on a user's own classes: a labelled support folder, unlabelled query images.

``SUPPORT_DIR/<class>/<image>`` gives any number of classes (ways) and images per class (shots). The episode
classifier of the evaluation (:func:`~fewlabels.methods.scl.fewshot_eval.classifier_proba`) is fitted on the
support features of the run's model -- same feature types, same support augmentation (``eval.support_augment``
augmented copies of every support image), same solver (batched; scikit-learn with ``exact``; nearest centroid
with ``classifier: nc``) -- and classifies every query::

    import fewlabels
    result = fewlabels.fewshot_predict("runs/scl-mini", "my_support", ["photos/"])
    result.labels          # predicted class name of each query, in result.paths order
    result.probabilities   # [queries, classes], rows sum to 1, columns in result.classes order

:func:`fewlabels.load_fewshot_run` loads a few-shot run without its training data: the size of the pre-training
classifier is read from the weights, and the input statistics are those the run was trained with, whatever
dataset the overrides point ``data`` at (evaluation-only and cross-domain datasets). :func:`fewshot_predict` here
takes the loaded config and model.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fewlabels.data.base import DataError, FewDataset
from fewlabels.data.fewshot import IMAGE_SUFFIXES, FileFewShotDataset
from fewlabels.methods.scl.config import FewShotConfig, FewShotEvalConfig
from fewlabels.methods.scl.fewshot_eval import (
    classifier_proba,
    extract_features,
    feature_types,
    support_copies,
)

__all__ = [
    "FewShotPredictions",
    "classify_queries",
    "fewshot_predict",
    "list_images",
    "read_support",
]


def list_images(items: Sequence[str | Path]) -> list[Path]:
    """Image files of ``items`` (files as given; folders: every image below them, sorted), no duplicates."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"query not found: {item}")
    seen: set[Path] = set()
    unique: list[Path] = []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    if not unique:
        raise DataError(f"no query images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, items))}")
    return unique


def read_support(support_dir: str | Path, image_size: int) -> FileFewShotDataset:
    """The labelled support set: one sub-folder of images per class (at least two classes, one image each)."""
    root = Path(support_dir)
    if not root.is_dir():
        raise DataError(f"support folder {root} not found: give a folder with one sub-folder of images per class")
    paths: list[Path] = []
    labels: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [folder.name] * len(files)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(
            f"support folder {root} holds {len(classes)} class folder(s) with images; few-shot prediction needs at "
            f"least two (SUPPORT_DIR/<class>/<image>)"
        )
    return FileFewShotDataset(paths, labels, image_size, source=str(root))


@dataclass
class FewShotPredictions:
    """Predictions of :func:`fewshot_predict`: ``probabilities [queries, classes]`` (rows sum to 1)."""

    paths: list[Path]
    classes: list[str]
    probabilities: np.ndarray
    shots: dict[str, int]

    @property
    def predicted(self) -> np.ndarray:
        """Index of the predicted class of each query."""
        return np.asarray(self.probabilities.argmax(axis=1), dtype=np.int64)

    @property
    def labels(self) -> list[str]:
        """Predicted class name of each query."""
        return [self.classes[int(i)] for i in self.predicted]

    def counts(self) -> dict[str, int]:
        """Queries predicted as each class."""
        found = np.bincount(self.predicted, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, found, strict=True)}

    def write_csv(self, path: Path) -> Path:
        """``path, predicted, p(<class>)...`` one row per query."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "predicted", *(f"p({c})" for c in self.classes)])
            for p, label, row in zip(self.paths, self.labels, self.probabilities, strict=True):
                writer.writerow([str(p), label, *(f"{v:.6f}" for v in row)])
        return path


def classify_queries(
    model: nn.Module,
    support: FewDataset,
    queries: FewDataset,
    n_classes: int,
    config: FewShotEvalConfig,
    device: torch.device | str = "cpu",
    C: float = 1.0,
) -> Tensor:
    """Probabilities ``[queries, n_classes]`` (float64; the feature types' probabilities averaged) of the
    evaluation's episode classifier fitted on ``support`` (labels ``0..n_classes-1``), with the support
    augmentation, feature types, classifier and solver of ``config``."""
    sup = extract_features(
        model, support, device, config.batch_size, config.support_augment, seed=config.seed, label="predict support"
    )
    qry = extract_features(model, queries, device, config.batch_size, 0, label="predict queries")
    used = support_copies(config.support_augment)
    ys = torch.as_tensor(sup.labels).repeat(len(used))[None]
    types = feature_types(config.features)
    proba = torch.zeros(len(queries), n_classes, dtype=torch.float64)
    for t in types:
        xs = torch.cat([sup.features[t][c] for c in used])[None]
        xq = qry.features[t][0][None]
        proba += classifier_proba(xs, ys, xq, n_classes, config.classifier, config.exact, C, device)[0].double()
    return proba / len(types)


def fewshot_predict(
    config: FewShotConfig,
    model: nn.Module,
    support_dir: str | Path,
    queries: Sequence[str | Path],
    device: torch.device,
) -> FewShotPredictions:
    """Classify the query images (files or folders) into the classes of ``support_dir`` with a trained few-shot
    ``model`` and its run's ``config`` (the protocol is its ``eval`` section).

    From a run directory, :func:`fewlabels.fewshot_predict` loads the run and calls this.
    """
    size = config.data.resolved_image_size()
    support = read_support(support_dir, size)
    paths = list_images(queries)
    query_set = FileFewShotDataset(paths, [0] * len(paths), size, source="queries")
    proba = classify_queries(model, support, query_set, support.num_classes, config.eval, device)
    shots = {c: int(n) for c, n in zip(support.class_names, np.bincount(support.labels), strict=True)}
    return FewShotPredictions(paths, list(support.class_names), proba.numpy(), shots)
