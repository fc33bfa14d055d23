"""Confusion matrix and scores against small examples worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from landcover.engine.errors import ConfigError
from landcover.engine.metrics import ConfusionMatrix


def test_three_classes_worked_by_hand():
    reference = np.array([[0, 0, 0, 1], [1, 2, 255, 0]])
    prediction = np.array([[0, 0, 1, 1], [2, 2, 0, 2]])
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(prediction, reference)
    # rows: reference, columns: prediction; the ignored pixel is not counted
    assert cm.matrix.tolist() == [[2, 1, 1],
                                  [0, 1, 1],
                                  [0, 0, 1]]
    assert cm.matrix.dtype == np.int64 and cm.total == 7
    # class 0: tp 2, fp 0, fn 2 | class 1: tp 1, fp 1, fn 1 | class 2: tp 1, fp 2, fn 0
    np.testing.assert_allclose(cm.iou(), [2 / 4, 1 / 3, 1 / 3])
    np.testing.assert_allclose(cm.f1(), [4 / 6, 2 / 4, 2 / 4])
    np.testing.assert_allclose(cm.accuracy(), [2 / 4, 1 / 2, 1 / 1])
    np.testing.assert_allclose(cm.precision(), [2 / 2, 1 / 2, 1 / 3])
    assert cm.miou == pytest.approx(7 / 18)
    assert cm.mf1 == pytest.approx(5 / 9)
    assert cm.macc == pytest.approx(2 / 3)
    assert cm.overall_accuracy == pytest.approx(4 / 7)


def test_absent_classes_are_nan_and_left_out_of_the_means():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 2, 1, 1]), np.array([0, 0, 1, 1]))
    assert cm.matrix.tolist() == [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # class 2 is predicted but not in the reference: IoU and F1 0, accuracy undefined;
    # class 3 is in neither: everything undefined.
    np.testing.assert_allclose(cm.iou(), [1 / 2, 1, 0, np.nan])
    np.testing.assert_allclose(cm.f1(), [2 / 3, 1, 0, np.nan])
    np.testing.assert_allclose(cm.accuracy(), [1 / 2, 1, np.nan, np.nan])
    np.testing.assert_allclose(cm.precision(), [1, 1, 0, np.nan])
    assert cm.miou == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert cm.mf1 == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert cm.macc == pytest.approx((1 / 2 + 1) / 2)
    assert cm.overall_accuracy == pytest.approx(3 / 4)


def test_updates_accumulate_and_match_a_plain_count():
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(5, ignore_index=255)
    expected = np.zeros((5, 5), np.int64)
    for _ in range(3):
        reference = rng.integers(0, 5, (17, 23)).astype(np.int64)
        reference[rng.random(reference.shape) < 0.2] = 255
        prediction = rng.integers(0, 5, (17, 23)).astype(np.uint8)
        cm.update(prediction, reference)
        for r, p in zip(reference.ravel(), prediction.ravel(), strict=True):
            if r != 255:
                expected[r, p] += 1
    np.testing.assert_array_equal(cm.matrix, expected)


def test_without_an_ignore_index_every_pixel_counts():
    cm = ConfusionMatrix(2, ignore_index=None)
    cm.update(np.array([1, 1, 0]), np.array([1, 0, 0]))
    assert cm.matrix.tolist() == [[1, 1], [0, 1]]


def test_an_empty_matrix_has_only_nan_scores():
    cm = ConfusionMatrix(3)
    assert math.isnan(cm.miou) and math.isnan(cm.overall_accuracy) and math.isnan(cm.macc)
    assert cm.to_dict()["miou"] is None


def test_to_dict_is_plain_json():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    document = json.loads(json.dumps(cm.to_dict(["water", "forest", "urban"]), allow_nan=False))
    assert document["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert document["oa"] == pytest.approx(2 / 3)
    assert document["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    urban = document["classes"][2]
    assert urban["name"] == "urban" and urban["iou"] is None and urban["accuracy"] is None
    assert document["classes"][0] == {
        "id": 0, "name": "water", "iou": 0.5, "f1": pytest.approx(2 / 3), "accuracy": 0.5,
        "precision": 1.0, "reference_pixels": 2, "predicted_pixels": 1,
    }


@pytest.mark.parametrize(
    ("prediction", "reference", "message"),
    [
        ([0, 3], [0, 1], "prediction holds class id 3"),
        ([0, 1], [0, 7], "reference holds class id 7"),
        ([0, 1], [-1, 1], "reference holds class id -1"),
        ([0, 1, 1], [0, 1], "differ in shape"),
    ],
)
def test_bad_labels_are_one_line_errors(prediction, reference, message):
    with pytest.raises(ConfigError, match=message):
        ConfusionMatrix(3).update(np.array(prediction), np.array(reference))


def test_majority_baseline_answers_the_most_frequent_reference_class():
    matrix = ConfusionMatrix(3, ignore_index=255)
    # reference: 6 pixels of class 1, 3 of class 0, 1 of class 2 (predictions irrelevant)
    matrix.update(np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]), np.array([1] * 6 + [0] * 3 + [2]))
    baseline = matrix.majority_baseline()
    # every pixel predicted as class 1: OA 6/10; IoU of class 1 = 6 / 10, others 0
    assert baseline.overall_accuracy == pytest.approx(0.6)
    assert baseline.iou().tolist() == pytest.approx([0.0, 0.6, 0.0])
    assert baseline.miou == pytest.approx(0.2)
    assert baseline.reference_counts.tolist() == matrix.reference_counts.tolist()
