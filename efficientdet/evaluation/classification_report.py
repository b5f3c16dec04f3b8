"""The classifier report: top-k accuracy, the confusion matrix, per-class accuracy and the most
frequent confusions, in the page layout of `report_page` (header, sections, inline PNGs).

A matrix of many classes is unreadable, so beyond ``MAX_MATRIX_CLASSES`` the chart keeps the
classes involved in the most mistakes and says so.
"""

from __future__ import annotations

import numpy as np

from efficientdet.evaluation.classification import ConfusionCounts
from efficientdet.evaluation.report_page import (
    ReportHeader,
    Section,
    figure_png,
    image_tag,
    note,
    page,
    pyplot,
    table,
    write_files,
)

CLASSIFICATION_REPORT_FILES = ("confusion_matrix.png", "report.html")
MAX_MATRIX_CLASSES = 20  # classes drawn in the confusion matrix (the most confused ones)
NUM_TOP_CONFUSIONS = 10  # rows of the top-confusions table


def class_name(names: dict[int, str], index: int) -> str:
    return names.get(index, str(index))


def matrix_classes(confusion: ConfusionCounts,
                   max_classes: int = MAX_MATRIX_CLASSES) -> list[int]:
    """Class indices the matrix shows: all of them, or the ``max_classes`` most confused."""
    if max_classes < 1:
        raise ValueError(f"max_classes must be >= 1, got {max_classes}")
    if confusion.num_classes <= max_classes:
        return list(range(confusion.num_classes))
    return confusion.most_confused_classes(max_classes)


def confusion_matrix_png(confusion: ConfusionCounts, names: dict[int, str],
                         max_classes: int = MAX_MATRIX_CLASSES) -> bytes:
    """Counts per (true, predicted) pair, rows shaded by the share of their class."""
    plt = pyplot()
    keep = matrix_classes(confusion, max_classes)
    counts = confusion.matrix[np.ix_(keep, keep)]
    totals = confusion.matrix[keep].sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, float), where=totals > 0)
    size = max(3.0, 0.45 * len(keep) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    labels = [class_name(names, k) for k in keep]
    ax.set_xticks(range(len(keep)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(keep)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(keep) <= 30:
        for (i, j), c in np.ndenumerate(counts):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=6,
                        color="white" if shares[i, j] > 0.5 else "black")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class")
    subset = "" if len(keep) == confusion.num_classes else \
        f" ({len(keep)} most confused of {confusion.num_classes} classes)"
    ax.set_title(f"Confusion matrix{subset}", fontsize=9)
    return figure_png(fig)


def report_html(confusion: ConfusionCounts, metrics: dict[str, float], names: dict[int, str],
                header: ReportHeader, *, matrix_png: bytes,
                max_classes: int = MAX_MATRIX_CLASSES,
                num_confusions: int = NUM_TOP_CONFUSIONS,
                title: str = "EfficientNet evaluation") -> str:
    """The classifier report page: accuracy, confusion matrix, per-class accuracy, top
    confusions."""
    totals = confusion.matrix.sum(axis=1)
    per_class = [(class_name(names, k), int(totals[k]), int(confusion.matrix[k, k]), acc)
                 for k, acc in enumerate(confusion.per_class_accuracy())]
    per_class.sort(key=lambda row: (row[3] is None, row[3] if row[3] is not None else 0.0))
    confusions = [(class_name(names, t), class_name(names, p), c, c / totals[t])
                  for t, p, c in confusion.top_confusions(num_confusions)]
    shown = len(matrix_classes(confusion, max_classes))
    matrix_note = (f"All {shown} classes." if shown == confusion.num_classes else
                   f"The {shown} classes involved in the most mistakes, of "
                   f"{confusion.num_classes}.")
    sections = [
        Section("Accuracy", note(f"{confusion.count} images, {confusion.num_classes} classes.")
                + table(("metric", "value"), metrics.items())),
        Section("Confusion matrix",
                note(f"Rows: true class; columns: predicted (top-1). {matrix_note}")
                + image_tag("Confusion matrix", matrix_png)),
        Section("Per-class accuracy",
                note("Share of each class's images predicted as that class, lowest first.")
                + table(("class", "images", "correct", "accuracy"), per_class)),
        Section("Top confusions",
                table(("true class", "predicted as", "images", "share of the true class"),
                      confusions) if confusions else note("No image was misclassified.")),
    ]
    return page(title, header, sections)


def write_classification_report(output_dir: str, confusion: ConfusionCounts,
                                metrics: dict[str, float], names: dict[int, str],
                                header: ReportHeader, *,
                                max_classes: int = MAX_MATRIX_CLASSES) -> list[str]:
    """Write confusion_matrix.png and report.html into output_dir (local or s3://); returns
    their URIs."""
    files = {"confusion_matrix.png": confusion_matrix_png(confusion, names, max_classes)}
    files["report.html"] = report_html(confusion, metrics, names, header,
                                       matrix_png=files["confusion_matrix.png"],
                                       max_classes=max_classes).encode()
    return write_files(output_dir, files)
