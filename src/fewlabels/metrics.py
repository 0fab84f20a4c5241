"""Pure evaluation metrics for the four methods.

Every function accepts torch tensors, NumPy arrays or (nested) Python sequences and converts them with
:func:`_as_tensor`; the arithmetic runs in torch on the device of the target / labels argument, so the
same code serves CPU evaluation and on-GPU validation loops. Results that summarise a whole evaluation
(accuracies, mIoU, correlations) are returned as Python floats; per-class vectors and matrices stay tensors.

Segmentation (CCT): :func:`confusion_matrix`, :func:`iou`, :func:`miou`, :func:`pixel_accuracy`,
:class:`SegmentationMeter`. Unsupervised clustering (AC): :func:`hungarian_match`, :func:`matched_accuracy`.
Few-shot episodes (SCL): :func:`mean_confidence_interval`. GLUE (RelBitFit): :func:`accuracy`, :func:`f1_score`,
:func:`matthews_corrcoef`, :func:`pearson`, :func:`spearman`, :func:`glue_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.optimize
import scipy.stats
import torch

__all__ = [
    "GLUE_TASK_METRICS",
    "SegmentationMeter",
    "accuracy",
    "confusion_matrix",
    "f1_score",
    "glue_metrics",
    "hungarian_match",
    "iou",
    "matched_accuracy",
    "matthews_corrcoef",
    "mean_confidence_interval",
    "miou",
    "pearson",
    "pixel_accuracy",
    "spearman",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]


def _as_tensor(x: ArrayLike, device: torch.device | None = None) -> torch.Tensor:
    """Return ``x`` as a tensor (no copy for tensors already on ``device``)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        # ascontiguousarray: torch cannot wrap negative-stride views such as np.flip(mask)
        t = torch.as_tensor(np.ascontiguousarray(x))
    return t if device is None else t.to(device)


def _as_labels(x: ArrayLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    """Return an integer label tensor as int64; floating or complex inputs are rejected (likely logits)."""
    t = _as_tensor(x, device)
    if t.is_floating_point() or t.is_complex():
        raise ValueError(
            f"{name} must hold integer class indices, got dtype {t.dtype}; "
            "take argmax over the class dimension of logits/probabilities first"
        )
    return t.long()


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Confusion matrix of integer label maps.

    ``C[i, j] = #{pixels p : target[p] = i, pred[p] = j, target[p] != ignore_index}`` — rows are the target class,
    columns the predicted class. Computed with one ``bincount`` of ``target * K + pred``.

    Args:
        pred: predicted class indices, any shape ``[*]`` (e.g. ``[B, H, W]``), integer dtype.
        target: ground-truth class indices, same shape as ``pred``; pixels equal to ``ignore_index`` are
            dropped (the prediction at those pixels is not inspected).
        num_classes: ``K``.
        ignore_index: target value that marks unlabeled pixels.

    Returns:
        ``[K, K]`` int64 tensor on ``target``'s device.

    Raises:
        ValueError: on shape mismatch, floating-point inputs, or any kept target / prediction outside
            ``[0, K)`` (silently clipping such values hides label-encoding bugs, e.g. VOC palette indices
            read as RGB).
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    target_t = _as_labels(target, "target")
    pred_t = _as_labels(pred, "pred", target_t.device)
    _check_same_shape(pred_t, target_t, "pred and target")
    keep = target_t != ignore_index
    return _count_pairs(target_t[keep], pred_t[keep], num_classes, "target", "pred", ignore_index)


def _count_pairs(
    rows: torch.Tensor, cols: torch.Tensor, k: int, row_name: str, col_name: str, ignore_index: int | None
) -> torch.Tensor:
    """``[k, k]`` int64 counts ``N[i, j] = #{p : rows[p] = i, cols[p] = j}`` (a bincount of ``rows*k+cols``).

    Raises ValueError naming ``row_name`` / ``col_name`` when a value lies outside ``[0, k)``.
    """
    for values, name in ((rows, row_name), (cols, col_name)):
        bad = (values < 0) | (values >= k)
        if bool(bad.any()):
            found = torch.unique(values[bad]).tolist()[:10]
            hint = (
                f"that are not the ignore index {ignore_index}; remap them to a class or to {ignore_index}"
                if ignore_index is not None and name == "target"
                else f"at evaluated pixels; {name} must hold indices in [0, {k})"
            )
            raise ValueError(f"{name} holds values {found} outside [0, {k}) {hint}")
    counts = torch.bincount(rows.reshape(-1) * k + cols.reshape(-1), minlength=k * k)
    return counts.reshape(k, k)


def _check_confusion(confusion: ArrayLike) -> torch.Tensor:
    c = _as_tensor(confusion)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"confusion must be a square [K, K] matrix, got shape {tuple(c.shape)}")
    return c.to(torch.float64)


def iou(confusion: ArrayLike) -> torch.Tensor:
    """Per-class intersection over union.

    ``IoU_k = C[k, k] / (sum_j C[k, j] + sum_i C[i, k] - C[k, k])``; ``NaN`` for a class that appears
    neither in the target nor in the prediction (denominator 0), so that it can be excluded from the mean.

    Args:
        confusion: ``[K, K]`` confusion matrix (rows target, columns prediction).

    Returns:
        ``[K]`` float64 tensor.
    """
    c = _check_confusion(confusion)
    tp = torch.diagonal(c)
    union = c.sum(dim=1) + c.sum(dim=0) - tp
    return torch.where(union > 0, tp / union.clamp_min(1.0), torch.full_like(tp, math.nan))


def miou(confusion: ArrayLike) -> float:
    """Mean IoU over present classes: ``mean_{k : union_k > 0} IoU_k``; ``NaN`` if no class is present.

    Args:
        confusion: ``[K, K]`` confusion matrix.
    """
    per_class = iou(confusion)
    present = ~torch.isnan(per_class)
    if not bool(present.any()):
        return math.nan
    return float(per_class[present].mean())


def pixel_accuracy(confusion: ArrayLike) -> float:
    """Pixel accuracy ``trace(C) / sum(C)`` over labeled pixels; ``NaN`` for an empty matrix.

    Args:
        confusion: ``[K, K]`` confusion matrix.
    """
    c = _check_confusion(confusion)
    total = float(c.sum())
    if total == 0:
        return math.nan
    return float(torch.diagonal(c).sum()) / total


class SegmentationMeter:
    """Accumulates a confusion matrix over batches and reports segmentation metrics.

    ``update`` accepts label maps ``[B, H, W]`` (or any shape matching the target) or logits ``[B, K, H, W]``
    (argmax over dim 1 is taken when ``pred`` has one more dimension than ``target``). The running matrix
    lives on the device of the first batch, so a GPU validation loop does not copy each batch to the host.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._confusion: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget all accumulated pixels."""
        self._confusion = None

    @property
    def confusion(self) -> torch.Tensor:
        """The accumulated ``[K, K]`` int64 confusion matrix (zeros before the first update)."""
        if self._confusion is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self._confusion

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one batch: ``pred`` ``[B, H, W]`` labels or ``[B, K, H, W]`` scores, ``target`` ``[B, H, W]``.

        Raises ValueError for labels outside ``[0, K)`` (see :func:`confusion_matrix`).
        """
        target_t = _as_tensor(target)
        pred_t = _as_tensor(pred, target_t.device)
        if pred_t.ndim == target_t.ndim + 1:
            if pred_t.shape[1] != self.num_classes:
                raise ValueError(
                    f"pred scores have {pred_t.shape[1]} channels in dim 1 but the meter has {self.num_classes} classes"
                )
            pred_t = pred_t.argmax(dim=1)
        batch = confusion_matrix(pred_t, target_t, self.num_classes, self.ignore_index)
        if self._confusion is None:
            self._confusion = batch
        else:
            self._confusion = self._confusion + batch.to(self._confusion.device)

    def compute(self) -> dict[str, Any]:
        """Metrics of everything seen so far.

        Returns:
            ``{"miou": float, "pixel_accuracy": float, "iou": list[float] (NaN for absent classes),
            "classes_present": list[int]}`` where a class is present if it occurs in the target or the
            prediction.
        """
        c = self.confusion
        per_class = iou(c)
        present = (~torch.isnan(per_class)).nonzero().flatten().tolist()
        return {
            "miou": miou(c),
            "pixel_accuracy": pixel_accuracy(c),
            "iou": per_class.tolist(),
            "classes_present": present,
        }


# --------------------------------------------------------------------------------------------------
# Clustering (unsupervised segmentation)
# --------------------------------------------------------------------------------------------------


def hungarian_match(pred: ArrayLike, target: ArrayLike, k: int, ignore_index: int = 255) -> torch.Tensor:
    """One-to-one cluster -> class assignment that maximises the number of agreeing pixels.

    With agreement ``A[c, y] = #{p : pred[p] = c, target[p] = y}`` (pixels whose target is ``ignore_index``
    dropped), returns the permutation ``m`` maximising ``sum_c A[c, m(c)]`` (``scipy.optimize.linear_sum_assignment``).

    Args:
        pred: cluster indices in ``[0, k)``, any shape ``[*]``.
        target: class indices in ``[0, k)``, same shape.
        k: number of clusters = number of classes.
        ignore_index: target value excluded from the matching.

    Returns:
        ``[k]`` int64 tensor, ``m[c]`` = class assigned to cluster ``c``.
    """
    target_t = _as_labels(target, "target")
    pred_t = _as_labels(pred, "pred", target_t.device)
    _check_same_shape(pred_t, target_t, "pred and target")
    keep = target_t != ignore_index
    agreement = _count_pairs(pred_t[keep], target_t[keep], k, "pred (clusters)", "target", ignore_index)
    rows, cols = scipy.optimize.linear_sum_assignment(agreement.cpu().numpy(), maximize=True)
    mapping = torch.empty(k, dtype=torch.int64)
    mapping[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.int64)
    return mapping


def matched_accuracy(pred: ArrayLike, target: ArrayLike, k: int, ignore_index: int = 255) -> float:
    """Accuracy after Hungarian matching: ``mean_{p : target[p] != ignore} [m(pred[p]) = target[p]]``.

    Args:
        pred: cluster indices in ``[0, k)``, any shape ``[*]``.
        target: class indices in ``[0, k)`` or ``ignore_index``, same shape.
        k: number of clusters = number of classes.
        ignore_index: target value excluded from the matching and from the accuracy.
    """
    target_t = _as_labels(target, "target")
    pred_t = _as_labels(pred, "pred", target_t.device)
    mapping = hungarian_match(pred_t, target_t, k, ignore_index).to(target_t.device)
    keep = target_t != ignore_index
    n = int(keep.sum())
    if n == 0:
        raise ValueError("matched_accuracy: every target pixel equals the ignore index; nothing to evaluate")
    return float((mapping[pred_t[keep]] == target_t[keep]).sum()) / n


# --------------------------------------------------------------------------------------------------
# Few-shot episodes
# --------------------------------------------------------------------------------------------------


def mean_confidence_interval(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and Student-t confidence half-width of episode accuracies.

    ``mean = (1/n) sum_i x_i``, ``sem = std(x, ddof=1) / sqrt(n)``,
    ``half_width = sem * t_{(1 + confidence) / 2, n - 1}`` (the protocol of the SCL reference: 600+ episodes,
    reported as ``mean +- half_width``).

    Args:
        values: ``[n]`` per-episode scores (any shape; flattened).
        confidence: coverage in ``(0, 1)``.

    Returns:
        ``(mean, half_width)``. For ``n = 1`` the half-width is ``NaN``: one episode says nothing about
        the spread, and reporting ``+- 0`` would claim a certainty that was never measured.

    Raises:
        ValueError: for no values, non-finite values, or ``confidence`` outside ``(0, 1)``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    x = _as_tensor(values).to(torch.float64).reshape(-1)
    n = x.numel()
    if n == 0:
        raise ValueError("mean_confidence_interval needs at least one value, got none")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("mean_confidence_interval got NaN or infinite values")
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan
    sem = float(x.std(correction=1)) / math.sqrt(n)
    t = float(scipy.stats.t.ppf((1.0 + confidence) / 2.0, n - 1))
    return mean, sem * t


# --------------------------------------------------------------------------------------------------
# Classification / regression (GLUE)
# --------------------------------------------------------------------------------------------------


def _pair(predictions: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    y = _as_tensor(labels).reshape(-1)
    p = _as_tensor(predictions, y.device).reshape(-1)
    if p.numel() != y.numel():
        raise ValueError(f"predictions and labels differ in length: {p.numel()} vs {y.numel()}")
    if y.numel() == 0:
        raise ValueError("predictions and labels are empty")
    return p, y


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of exact matches ``(1/n) sum_i [p_i = y_i]``; ``predictions``, ``labels``: ``[n]``."""
    p, y = _pair(predictions, labels)
    return float((p == y).double().mean())


def f1_score(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class 1: ``2 TP / (2 TP + FP + FN)``; 0.0 when there is no positive at all.

    Args:
        predictions: ``[n]`` predicted labels in ``{0, 1}``.
        labels: ``[n]`` true labels in ``{0, 1}``.
    """
    p, y = _pair(predictions, labels)
    pos_p, pos_y = p == 1, y == 1
    tp = int((pos_p & pos_y).sum())
    fp = int((pos_p & ~pos_y).sum())
    fn = int((~pos_p & pos_y).sum())
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2.0 * tp / denom


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient (multi-class form, Gorodkin 2004).

    With confusion ``C`` over the classes seen in either input, ``c = trace(C)``, ``s = sum(C)``,
    ``t_k = sum_j C[k, j]`` (true counts), ``p_k = sum_i C[i, k]`` (predicted counts):
    ``MCC = (c s - sum_k t_k p_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))``; 0.0 when the denominator is 0 (a
    constant prediction or label vector), as scikit-learn does. For two classes this is the usual
    ``(TP TN - FP FN) / sqrt(...)``.

    Args:
        predictions: ``[n]`` predicted labels (any integers).
        labels: ``[n]`` true labels.
    """
    p, y = _pair(predictions, labels)
    classes, inverse = torch.unique(torch.cat([y, p]), return_inverse=True)
    k = classes.numel()
    n = y.numel()
    conf = _count_pairs(inverse[:n], inverse[n:], k, "labels", "predictions", None).to(torch.float64)
    s = conf.sum()
    c = torch.diagonal(conf).sum()
    t_k = conf.sum(dim=1)
    p_k = conf.sum(dim=0)
    numerator = c * s - (t_k * p_k).sum()
    denominator = torch.sqrt((s * s - (p_k * p_k).sum()) * (s * s - (t_k * t_k).sum()))
    if float(denominator) == 0.0:
        return 0.0
    return float(numerator / denominator)


def pearson(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation ``sum (x - x_bar)(y - y_bar) / sqrt(sum (x - x_bar)^2 sum (y - y_bar)^2)`` in
    float64.

    ``predictions``, ``labels``: ``[n]`` real scores. ``NaN`` if either input is constant (undefined correlation).
    """
    p, y = _pair(predictions, labels)
    x = p.to(torch.float64)
    z = y.to(torch.float64)
    x = x - x.mean()
    z = z - z.mean()
    denom = torch.sqrt((x * x).sum() * (z * z).sum())
    if float(denom) == 0.0:
        return math.nan
    return float((x * z).sum() / denom)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` ``[n]`` (float64 ``[n]``); tied values share the mean of the ranks they span."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    ends = torch.cumsum(counts, dim=0)  # rank of the last member of each tie group
    group_rank = ends - (counts - 1.0) / 2.0
    return group_rank[inverse]


def spearman(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties share their mean rank).

    ``predictions``, ``labels``: ``[n]`` real scores. ``NaN`` if either input is constant.
    """
    p, y = _pair(predictions, labels)
    return pearson(_average_ranks(p.to(torch.float64)), _average_ranks(y.to(torch.float64)))


GLUE_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "mnli-mm": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}
"""The metrics reported per GLUE task (keys of the :func:`glue_metrics` result)."""

_GLUE_ALIASES = {
    "sst-2": "sst2",
    "sts-b": "stsb",
    "mnli-m": "mnli",
    "mnli_mm": "mnli-mm",
    "mnli-mismatched": "mnli-mm",
}

_METRIC_FUNCTIONS = {
    "mcc": matthews_corrcoef,
    "accuracy": accuracy,
    "f1": f1_score,
    "pearson": pearson,
    "spearman": spearman,
}


def glue_metrics(task: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """The GLUE metrics of ``task`` (see :data:`GLUE_TASK_METRICS`).

    cola: ``mcc``; sst2, qnli, rte, mnli, mnli-mm, wnli: ``accuracy``; mrpc, qqp: ``f1`` (positive class
    1) and ``accuracy``; stsb: ``pearson`` and ``spearman``.

    Args:
        task: GLUE task name (case-insensitive; ``sst-2``, ``sts-b``, ``mnli-m`` accepted as aliases).
        predictions: ``[n]`` predicted labels (or scores for stsb), or ``[n, C]`` logits for
            classification tasks (argmax over the last dim is taken) / ``[n, 1]`` for stsb.
        labels: ``[n]`` true labels (or gold scores for stsb).

    Raises:
        ValueError: for an unknown task (the message lists the valid ones).
    """
    name = task.strip().lower()
    name = _GLUE_ALIASES.get(name, name)
    if name not in GLUE_TASK_METRICS:
        valid = ", ".join(GLUE_TASK_METRICS)
        raise ValueError(f"unknown GLUE task {task!r}; valid tasks: {valid}")
    p = _as_tensor(predictions)
    if name == "stsb":
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
    elif p.ndim == 2:
        p = p.argmax(dim=-1)
    return {metric: float(_METRIC_FUNCTIONS[metric](p, labels)) for metric in GLUE_TASK_METRICS[name]}
