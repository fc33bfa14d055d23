"""Segmentation accuracy from one confusion matrix.

:class:`ConfusionMatrix` counts (reference, prediction) pixel pairs over any number of
images; every score is computed from those counts, so scores over a data set are exact
pooled figures (not means of per-image scores). Rows are the reference classes, columns
the predicted ones. For class ``k`` with ``tp`` the diagonal, ``fp`` the rest of its
column and ``fn`` the rest of its row:

- IoU = tp / (tp + fp + fn);  F1 = 2 tp / (2 tp + fp + fn)
- accuracy (recall, producer's accuracy) = tp / (tp + fn)
- precision (user's accuracy) = tp / (tp + fp)
- OA (overall accuracy) = trace / total

A score whose denominator is zero is NaN: IoU and F1 for a class absent from both the
reference and the prediction, accuracy for a class absent from the reference, precision
for a class never predicted. The means (mIoU, mF1, mAcc) leave NaN classes out, so a class
that a test set lacks does not count as 0; a class predicted but absent from the reference
still counts, with IoU and F1 of 0. In :meth:`ConfusionMatrix.to_dict` NaN becomes null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from landcover.engine.errors import ConfigError


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as float64, NaN where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def _mean(values: np.ndarray) -> float:
    """Mean over the finite entries; NaN when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


class ConfusionMatrix:
    """Pixel counts ``matrix[reference, prediction]`` (int64) of ``num_classes`` classes.

    :meth:`update` adds a pair of label arrays; reference pixels equal to ``ignore_index``
    are left out (None: none are).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ConfigError(f"a confusion matrix needs at least 1 class, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, prediction: np.ndarray, reference: np.ndarray) -> None:
        """Count the pixels of ``prediction`` against ``reference`` (integer arrays of one
        shape); both must hold class ids ``0 .. num_classes - 1`` (or the ignore index in
        the reference)."""
        prediction, reference = np.asarray(prediction), np.asarray(reference)
        if prediction.shape != reference.shape:
            raise ConfigError(f"prediction {prediction.shape} and reference "
                              f"{reference.shape} differ in shape")
        prediction, reference = prediction.ravel(), reference.ravel()
        if self.ignore_index is not None:
            kept = reference != self.ignore_index
            prediction, reference = prediction[kept], reference[kept]
        classes = self.num_classes
        for name, labels in (("reference", reference), ("prediction", prediction)):
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                bad = labels[(labels < 0) | (labels >= classes)][0]
                ignored = "" if self.ignore_index is None else \
                    f" (or the ignore index {self.ignore_index})"
                raise ConfigError(f"the {name} holds class id {bad}, but the classes are "
                                  f"0..{classes - 1}{ignored}")
        pairs = reference.astype(np.int64) * classes + prediction.astype(np.int64)
        self.matrix += np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)

    # ------------------------------------------------------------------ scores

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.matrix)

    @property
    def reference_counts(self) -> np.ndarray:
        """Pixels per reference class (row sums)."""
        return self.matrix.sum(axis=1)

    @property
    def predicted_counts(self) -> np.ndarray:
        """Pixels per predicted class (column sums)."""
        return self.matrix.sum(axis=0)

    def iou(self) -> np.ndarray:
        """Per-class intersection over union; NaN for classes in neither labels."""
        tp = self.true_positives
        return _ratio(tp, self.reference_counts + self.predicted_counts - tp)

    def f1(self) -> np.ndarray:
        """Per-class F1 (Dice); NaN for classes in neither labels."""
        return _ratio(2 * self.true_positives, self.reference_counts + self.predicted_counts)

    def accuracy(self) -> np.ndarray:
        """Per-class accuracy (recall, producer's accuracy); NaN for classes absent from
        the reference."""
        return _ratio(self.true_positives, self.reference_counts)

    def precision(self) -> np.ndarray:
        """Per-class precision (user's accuracy); NaN for classes never predicted."""
        return _ratio(self.true_positives, self.predicted_counts)

    @property
    def miou(self) -> float:
        return _mean(self.iou())

    @property
    def mf1(self) -> float:
        return _mean(self.f1())

    @property
    def macc(self) -> float:
        return _mean(self.accuracy())

    @property
    def overall_accuracy(self) -> float:
        total = self.total
        return int(self.true_positives.sum()) / total if total else math.nan

    def majority_baseline(self) -> ConfusionMatrix:
        """The matrix of a predictor that always answers the most frequent reference class
        (the floor a model has to beat)."""
        baseline = ConfusionMatrix(self.num_classes, self.ignore_index)
        baseline.matrix[:, int(np.argmax(self.reference_counts))] = self.reference_counts
        return baseline

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Scores and the matrix as plain JSON types (NaN as None)."""
        names = list(class_names) if class_names is not None else \
            [f"class {k}" for k in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ConfigError(f"{len(names)} class names for {self.num_classes} classes")
        iou, f1, accuracy, precision = self.iou(), self.f1(), self.accuracy(), self.precision()
        reference, predicted = self.reference_counts, self.predicted_counts
        return {
            "miou": _json_number(self.miou),
            "mf1": _json_number(self.mf1),
            "oa": _json_number(self.overall_accuracy),
            "macc": _json_number(self.macc),
            "pixels": self.total,
            "ignore_index": self.ignore_index,
            "classes": [
                {
                    "id": k,
                    "name": names[k],
                    "iou": _json_number(iou[k]),
                    "f1": _json_number(f1[k]),
                    "accuracy": _json_number(accuracy[k]),
                    "precision": _json_number(precision[k]),
                    "reference_pixels": int(reference[k]),
                    "predicted_pixels": int(predicted[k]),
                }
                for k in range(self.num_classes)
            ],
            "confusion_matrix": self.matrix.tolist(),
        }
