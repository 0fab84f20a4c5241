"""Tests of fewlabels.metrics: golden vectors from the reference implementations plus hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch

from fewlabels import metrics

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    path = GOLDEN / "metrics.npz"
    if not path.is_file():
        pytest.skip(f"golden vectors not found at {path}; see shared/golden/README.md")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# ---------------------------------------------------------------------------------- golden vectors


def test_golden_confusion_matrix(golden):
    k = int(golden["num_classes"])
    got = metrics.confusion_matrix(torch.from_numpy(golden["pred"]), torch.from_numpy(golden["target"]), k)
    assert got.dtype == torch.int64
    assert got.shape == (k, k)
    np.testing.assert_array_equal(got.numpy(), golden["confusion"])
    # numpy inputs give the same matrix
    np.testing.assert_array_equal(
        metrics.confusion_matrix(golden["pred"], golden["target"], k).numpy(), golden["confusion"]
    )


def test_golden_iou_miou_pixel_accuracy(golden):
    k = int(golden["num_classes"])
    conf = metrics.confusion_matrix(golden["pred"], golden["target"], k)
    per_class = metrics.iou(conf)
    assert per_class.dtype == torch.float64
    np.testing.assert_allclose(per_class.numpy(), golden["iou"], rtol=1e-5, atol=1e-6)
    assert metrics.miou(conf) == pytest.approx(float(golden["miou"]), rel=1e-5, abs=1e-6)
    assert metrics.pixel_accuracy(conf) == pytest.approx(float(golden["pixel_accuracy"]), rel=1e-5, abs=1e-6)
    # the golden confusion matrix itself (numpy) gives the same answers
    np.testing.assert_allclose(metrics.iou(golden["confusion"]).numpy(), golden["iou"], rtol=1e-5, atol=1e-6)


def test_golden_hungarian_match_and_matched_accuracy(golden):
    k = int(golden["cluster_k"])
    mapping = metrics.hungarian_match(golden["cluster_pred"], golden["cluster_target"], k)
    assert mapping.dtype == torch.int64
    np.testing.assert_array_equal(mapping.numpy(), golden["cluster_to_class"])
    acc = metrics.matched_accuracy(golden["cluster_pred"], golden["cluster_target"], k)
    assert acc == pytest.approx(float(golden["matched_accuracy"]), rel=1e-5, abs=1e-6)


def test_golden_mean_confidence_interval(golden):
    mean, half = metrics.mean_confidence_interval(golden["episode_accs"], confidence=0.95)
    assert mean == pytest.approx(float(golden["ci95_mean"]), rel=1e-5, abs=1e-6)
    assert half == pytest.approx(float(golden["ci95_halfwidth"]), rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------ segmentation


def test_confusion_matrix_drops_ignored_pixels_whatever_their_prediction():
    target = torch.tensor([[0, 1, 255], [2, 255, 1]])
    pred = torch.tensor([[0, 2, 7], [2, -3, 1]])  # out-of-range predictions sit on ignored pixels only
    conf = metrics.confusion_matrix(pred, target, 3)
    expected = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    assert torch.equal(conf, expected)
    assert metrics.pixel_accuracy(conf) == pytest.approx(3 / 4)


def test_confusion_matrix_accepts_uint8_and_negative_stride_numpy_masks():
    target = np.array([[0, 1, 2], [255, 2, 1]], dtype=np.uint8)  # as read from a VOC PNG
    pred = np.flip(np.array([[2, 1, 0], [1, 2, 0]], dtype=np.uint8), axis=1)  # [[0, 1, 2], [0, 2, 1]]
    assert metrics.confusion_matrix(pred, target, 3).tolist() == [[1, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_confusion_matrix_custom_ignore_index():
    conf = metrics.confusion_matrix([0, 1, 1, 0], [0, -1, 1, 1], 2, ignore_index=-1)
    assert conf.tolist() == [[1, 0], [1, 1]]


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        ([0, 1], [0, 5], r"target holds values \[5\] outside \[0, 3\)"),
        ([0, 3], [0, 1], r"pred holds values \[3\] outside \[0, 3\)"),
        ([-1, 0], [0, 1], r"pred holds values \[-1\]"),
    ],
)
def test_confusion_matrix_rejects_out_of_range_labels(pred, target, match):
    with pytest.raises(ValueError, match=match):
        metrics.confusion_matrix(pred, target, 3)


def test_confusion_matrix_rejects_float_predictions_and_shape_mismatch():
    with pytest.raises(ValueError, match="integer class indices"):
        metrics.confusion_matrix(np.zeros(4, dtype=np.float32), np.zeros(4, dtype=np.int64), 2)
    with pytest.raises(ValueError, match="same shape"):
        metrics.confusion_matrix(np.zeros(4, dtype=np.int64), np.zeros(5, dtype=np.int64), 2)


def test_iou_is_nan_for_classes_absent_from_prediction_and_target():
    # class 2 never occurs; class 1 only predicted (IoU 0, still counted in the mean)
    target = [0, 0, 0, 3, 3]
    pred = [0, 0, 1, 3, 0]
    conf = metrics.confusion_matrix(pred, target, 4)
    per_class = metrics.iou(conf)
    assert math.isnan(per_class[2].item())
    np.testing.assert_allclose(per_class[[0, 1, 3]].numpy(), [2 / 4, 0.0, 1 / 2])
    assert metrics.miou(conf) == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert math.isnan(metrics.miou(torch.zeros(3, 3, dtype=torch.int64)))
    assert math.isnan(metrics.pixel_accuracy(torch.zeros(3, 3, dtype=torch.int64)))


def test_segmentation_meter_accumulates_like_one_big_confusion_matrix():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 6, 7), generator=gen)
    target[:, 0, :] = 255
    logits = torch.randn(3, 5, 6, 7, generator=gen)
    meter = metrics.SegmentationMeter(num_classes=5)
    for b in range(3):
        meter.update(logits[b : b + 1], target[b : b + 1])  # logits path: argmax over dim 1
    whole = metrics.confusion_matrix(logits.argmax(1), target, 5)
    assert torch.equal(meter.confusion, whole)
    result = meter.compute()
    assert result["miou"] == pytest.approx(metrics.miou(whole))
    assert result["pixel_accuracy"] == pytest.approx(metrics.pixel_accuracy(whole))
    np.testing.assert_allclose(result["iou"], metrics.iou(whole).numpy())
    assert result["classes_present"] == [0, 1, 2, 3, 4]
    meter.reset()
    assert int(meter.confusion.sum()) == 0


def test_segmentation_meter_reports_only_present_classes():
    meter = metrics.SegmentationMeter(num_classes=3)
    meter.update(np.array([[0, 0], [2, 2]]), np.array([[0, 255], [2, 0]]))
    result = meter.compute()
    assert result["classes_present"] == [0, 2]
    assert math.isnan(result["iou"][1])
    # class 0: tp 1, target 2, pred 1 -> 1/2; class 2: tp 1, target 1, pred 2 -> 1/2
    assert result["miou"] == pytest.approx(0.5)
    assert result["pixel_accuracy"] == pytest.approx(2 / 3)


# -------------------------------------------------------------------------------------- clustering


def test_hungarian_recovers_a_known_permutation():
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (2, 8, 8), generator=gen)
    cluster_of_class = torch.tensor([2, 0, 3, 1])
    pred = cluster_of_class[target]
    mapping = metrics.hungarian_match(pred, target, 4)
    assert mapping.tolist() == [1, 3, 0, 2]  # inverse permutation: cluster -> class
    assert metrics.matched_accuracy(pred, target, 4) == 1.0


def test_matched_accuracy_ignores_pixels_and_counts_mismatches():
    # clusters swap classes 0 and 1; one pixel wrong; two ignored pixels whose "cluster" would disagree
    target = np.array([0, 0, 0, 1, 1, 1, 255, 255])
    pred = np.array([1, 1, 1, 0, 0, 1, 0, 0])
    assert metrics.hungarian_match(pred, target, 2).tolist() == [1, 0]
    assert metrics.matched_accuracy(pred, target, 2) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="ignore index"):
        metrics.matched_accuracy([0, 1], [255, 255], 2)


def test_hungarian_rejects_clusters_out_of_range():
    with pytest.raises(ValueError, match=r"pred \(clusters\) holds values \[3\]"):
        metrics.hungarian_match([0, 3], [0, 1], 2)


# ---------------------------------------------------------------------------------------- episodes


def test_confidence_interval_matches_scipy_student_t():
    values = np.array([0.61, 0.72, 0.55, 0.68, 0.70, 0.64])
    mean, half = metrics.mean_confidence_interval(values, confidence=0.9)
    expected = scipy.stats.sem(values) * scipy.stats.t.ppf(0.95, len(values) - 1)
    assert mean == pytest.approx(values.mean())
    assert half == pytest.approx(expected, rel=1e-12)


def test_confidence_interval_edge_cases():
    mean, half = metrics.mean_confidence_interval([0.8])
    assert mean == pytest.approx(0.8)
    assert math.isnan(half)
    assert metrics.mean_confidence_interval(torch.full((5,), 0.5)) == (0.5, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        metrics.mean_confidence_interval([])
    with pytest.raises(ValueError, match="confidence"):
        metrics.mean_confidence_interval([0.1, 0.2], confidence=1.0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.mean_confidence_interval([0.1, float("nan")])


# -------------------------------------------------------------------------------------------- GLUE

Y_BIN = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1])
P_BIN = np.array([1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1])


def test_binary_metrics_match_sklearn():
    assert metrics.accuracy(P_BIN, Y_BIN) == pytest.approx(sklearn.metrics.accuracy_score(Y_BIN, P_BIN))
    assert metrics.f1_score(P_BIN, Y_BIN) == pytest.approx(sklearn.metrics.f1_score(Y_BIN, P_BIN))
    assert metrics.matthews_corrcoef(P_BIN, Y_BIN) == pytest.approx(sklearn.metrics.matthews_corrcoef(Y_BIN, P_BIN))
    # by hand: TP 5, TN 4, FP 1, FN 2 -> F1 = 10 / 13, MCC = (20 - 2) / sqrt(6 * 7 * 5 * 6)
    assert metrics.f1_score(P_BIN, Y_BIN) == pytest.approx(10 / 13)
    assert metrics.matthews_corrcoef(P_BIN, Y_BIN) == pytest.approx(18 / math.sqrt(6 * 7 * 5 * 6))


def test_mcc_multiclass_and_degenerate_cases():
    y = np.array([0, 1, 2, 2, 1, 0, 2, 1])
    p = np.array([0, 2, 2, 2, 1, 0, 1, 1])
    assert metrics.matthews_corrcoef(p, y) == pytest.approx(sklearn.metrics.matthews_corrcoef(y, p))
    assert metrics.matthews_corrcoef(np.ones(5, dtype=int), Y_BIN[:5]) == 0.0  # constant prediction
    assert metrics.f1_score(np.zeros(4, dtype=int), np.zeros(4, dtype=int)) == 0.0  # no positive anywhere


def test_correlations_match_scipy_with_ties():
    x = np.array([1.0, 2.0, 2.0, 3.5, 0.5, 2.0, 4.0, 4.0])
    y = np.array([0.3, 1.1, 0.9, 2.0, 0.1, 1.5, 1.7, 2.5])
    assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], rel=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0], rel=1e-12)
    # average ranks of x by hand: 0.5->1, 1->2, three 2.0s share (3+4+5)/3 = 4, 3.5->6, two 4.0s share 7.5
    ranks = metrics._average_ranks(torch.tensor(x))
    assert ranks.tolist() == [2.0, 4.0, 4.0, 6.0, 1.0, 4.0, 7.5, 7.5]
    assert math.isnan(metrics.pearson(np.ones(4), y[:4]))


@pytest.mark.parametrize(
    ("task", "keys"),
    [
        ("cola", ["mcc"]),
        ("sst2", ["accuracy"]),
        ("mrpc", ["f1", "accuracy"]),
        ("qqp", ["f1", "accuracy"]),
        ("mnli", ["accuracy"]),
        ("mnli-mm", ["accuracy"]),
        ("qnli", ["accuracy"]),
        ("rte", ["accuracy"]),
        ("wnli", ["accuracy"]),
    ],
)
def test_glue_metrics_per_classification_task(task, keys):
    result = metrics.glue_metrics(task, P_BIN, Y_BIN)
    assert list(result) == keys
    expected = {
        "mcc": sklearn.metrics.matthews_corrcoef(Y_BIN, P_BIN),
        "accuracy": 9 / 12,
        "f1": 10 / 13,
    }
    for key in keys:
        assert result[key] == pytest.approx(expected[key])


def test_glue_metrics_takes_argmax_of_logits_and_stsb_scores():
    logits = np.stack([1 - P_BIN, P_BIN], axis=1).astype(np.float32)  # [n, 2] one-hot "logits"
    assert metrics.glue_metrics("SST-2", logits, Y_BIN) == {"accuracy": pytest.approx(0.75)}
    scores = np.array([[0.1], [2.5], [3.0], [4.9], [1.2]])
    gold = np.array([0.0, 2.0, 3.2, 5.0, 1.0])
    result = metrics.glue_metrics("stsb", scores, gold)
    assert result["pearson"] == pytest.approx(scipy.stats.pearsonr(scores[:, 0], gold)[0])
    assert result["spearman"] == pytest.approx(1.0)


def test_glue_metrics_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'squad'.*cola, sst2, mrpc"):
        metrics.glue_metrics("squad", [0], [0])
