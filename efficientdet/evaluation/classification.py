"""Top-k accuracy of a classifier, counted from scores and integer labels."""

from __future__ import annotations

import numpy as np


class TopKAccumulator:
    """Counts correct top-k predictions batch by batch (scores [B, K], labels [B])."""

    def __init__(self, ks: tuple[int, ...] = (1, 5)):
        self.ks = tuple(ks)
        self.correct = {k: 0 for k in self.ks}
        self.count = 0

    def update(self, scores, labels) -> None:
        scores = np.asarray(scores)
        labels = np.asarray(labels).reshape(-1)
        if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
            raise ValueError(f"scores must be [B, K] matching labels [B]; got {scores.shape} "
                             f"and {labels.shape}")
        order = np.argsort(-scores, axis=1, kind="stable")
        for k in self.ks:
            top = order[:, : min(k, scores.shape[1])]
            self.correct[k] += int(np.sum(np.any(top == labels[:, None], axis=1)))
        self.count += labels.shape[0]

    def result(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("top-k accuracy of zero examples is undefined (empty dataset?)")
        return {f"top{k}": self.correct[k] / self.count for k in self.ks}


def topk_accuracy(scores, labels, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    acc = TopKAccumulator(ks)
    acc.update(scores, labels)
    return acc.result()


class ConfusionCounts:
    """Confusion matrix of a classifier counted batch by batch: ``matrix[true, predicted]``
    over class indices 0..num_classes-1."""

    def __init__(self, num_classes: int):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    @property
    def num_classes(self) -> int:
        return self.matrix.shape[0]

    @property
    def count(self) -> int:
        return int(self.matrix.sum())

    def update(self, predicted, labels) -> None:
        predicted = np.asarray(predicted).reshape(-1)
        labels = np.asarray(labels).reshape(-1)
        if predicted.shape != labels.shape:
            raise ValueError(f"predicted {predicted.shape} and labels {labels.shape} differ "
                             f"in length")
        for name, values in (("predicted", predicted), ("labels", labels)):
            outside = values[(values < 0) | (values >= self.num_classes)]
            if outside.size:
                raise ValueError(f"{name} hold class indices outside 0..{self.num_classes - 1}:"
                                 f" {sorted(set(outside.tolist()))}")
        np.add.at(self.matrix, (labels, predicted), 1)

    def per_class_accuracy(self) -> list[float | None]:
        """Share of each class's images predicted as that class (None: no images of it)."""
        totals = self.matrix.sum(axis=1)
        return [float(self.matrix[k, k] / totals[k]) if totals[k] else None
                for k in range(self.num_classes)]

    def top_confusions(self, n: int = 10) -> list[tuple[int, int, int]]:
        """The ``n`` most frequent mistakes as (true, predicted, count), most frequent first."""
        off = self.matrix.copy()
        np.fill_diagonal(off, 0)
        true, pred = np.nonzero(off)
        ranked = sorted(zip(true.tolist(), pred.tolist(), off[true, pred].tolist()),
                        key=lambda t: (-t[2], t[0], t[1]))
        return ranked[:n]

    def most_confused_classes(self, n: int) -> list[int]:
        """The ``n`` classes involved in the most mistakes (as truth or as prediction), in
        index order: the rows and columns a readable matrix of many classes keeps."""
        off = self.matrix.copy()
        np.fill_diagonal(off, 0)
        involvement = off.sum(axis=0) + off.sum(axis=1)
        keep = np.argsort(-involvement, kind="stable")[:n]
        return sorted(int(k) for k in keep)
