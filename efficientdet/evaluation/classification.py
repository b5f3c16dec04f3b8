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
