"""The detection report: COCO metrics, PR curves, per-class AP (one table + one chart) and sample
detections, in the page layout of `report_page` (header, sections, inline PNGs).

Samples show ground truth (green) and, of the predictions scoring at least
``SAMPLE_SCORE_THRESHOLD``, the ``MAX_BOXES_PER_SAMPLE`` highest (red), so a sample stays
readable; both numbers are stated on the page. Titles are the images' file names.
"""

from __future__ import annotations

import numpy as np

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

REPORT_FILES = ("pr_curves.png", "per_class_ap.png", "samples.png", "report.html")
SAMPLE_SCORE_THRESHOLD = 0.3  # predictions drawn on samples score at least this
MAX_BOXES_PER_SAMPLE = 10  # and are at most this many per image, highest scores first


def pr_curves_png(coco) -> bytes:
    """Precision vs recall averaged over classes at IoU 0.50, 0.75 and 0.50:0.95
    (area all, 100 detections), from COCOeval's eval['precision'] [T, R, K, A, M]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    prec = coco.precision[:, :, :, 0, -1]  # [T, R, K]
    recall = coco.recall_thresholds
    ious = list(np.round(coco.iou_thresholds, 2))

    def mean_over_classes(p):  # [R, K] -> [R], ignoring classes without ground truth (-1)
        masked = np.where(p > -1, p, np.nan)
        if not masked.size:
            return np.zeros(len(recall))
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.nanmean(masked, axis=-1))

    for label, t in (("IoU=0.50", ious.index(0.5)), ("IoU=0.75", ious.index(0.75))):
        ax.plot(recall, mean_over_classes(prec[t]), label=f"{label}")
    ax.plot(recall, np.mean([mean_over_classes(prec[t]) for t in range(len(ious))], axis=0),
            label="IoU=0.50:0.95", linestyle="--")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Precision-recall (AP {coco.stats['AP']:.3f})")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return figure_png(fig)


def _ranked_per_class_ap(coco) -> list[tuple[str, float | None]]:
    """Classes by AP, highest first; classes without ground truth (None) last."""
    return sorted(coco.per_class_ap.items(),
                  key=lambda item: (item[1] is None, -(item[1] or 0.0)))


def per_class_ap_png(coco) -> bytes:
    plt = pyplot()
    items = [(n, ap) for n, ap in coco.per_class_ap.items() if ap is not None]
    items.sort(key=lambda x: x[1])
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.25 * len(items) + 1)))
    if items:
        ax.barh([n for n, _ in items], [ap for _, ap in items], color="#4878d0")
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP@[.50:.95]")
    ax.set_title("Per-class AP")
    return figure_png(fig)


def shown_predictions(scores, score_threshold: float = SAMPLE_SCORE_THRESHOLD,
                      max_boxes: int = MAX_BOXES_PER_SAMPLE) -> np.ndarray:
    """Indices of the predictions a sample draws: score >= threshold, at most ``max_boxes``,
    highest score first."""
    if max_boxes < 0:
        raise ValueError(f"max_boxes must be >= 0, got {max_boxes}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] >= score_threshold][:max_boxes]


def sample_title(sample: dict) -> str:
    """The image's file name (from image/filename), else its id."""
    filename = sample.get("filename") or ""
    if isinstance(filename, bytes):
        filename = filename.decode(errors="replace")
    return filename.rsplit("/", 1)[-1] or f"image {sample['image_id']}"


def samples_png(samples: list[dict], names: dict[int, str],
                score_threshold: float = SAMPLE_SCORE_THRESHOLD,
                max_boxes: int = MAX_BOXES_PER_SAMPLE, columns: int = 4) -> bytes:
    """Grid of images: predictions (red, with score; see `shown_predictions`) over ground
    truth (green), each titled with its file name."""
    plt = pyplot()
    n = max(1, len(samples))
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, min(columns, n), figsize=(3 * min(columns, n), 3 * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        ax.imshow(s["image"])
        for (y0, x0, y1, x1), c in zip(s["true_boxes"], s["true_category_ids"]):
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime",
                                       linewidth=1.5))
        boxes = np.asarray(s["pred_boxes"]).reshape(-1, 4)
        for i in shown_predictions(s["pred_scores"], score_threshold, max_boxes):
            y0, x0, y1, x1 = boxes[i]
            sc, c = float(s["pred_scores"][i]), int(s["pred_category_ids"][i])
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red",
                                       linewidth=1.0))
            ax.text(x0, y0, f"{names.get(c, c)} {sc:.2f}", color="white", fontsize=6,
                    bbox={"facecolor": "red", "alpha": 0.6, "pad": 1, "linewidth": 0})
        ax.set_title(sample_title(s), fontsize=8)
    return figure_png(fig)


def samples_caption(score_threshold: float = SAMPLE_SCORE_THRESHOLD,
                    max_boxes: int = MAX_BOXES_PER_SAMPLE) -> str:
    return (f"Ground truth in green. Predictions in red: those with score >= "
            f"{score_threshold:.2f}, at most {max_boxes} per image (highest scores first).")


def report_html(coco, header: ReportHeader, *, pr_curves: bytes, per_class_ap: bytes,
                samples: bytes | None = None,
                score_threshold: float = SAMPLE_SCORE_THRESHOLD,
                max_boxes: int = MAX_BOXES_PER_SAMPLE,
                title: str = "EfficientDet evaluation") -> str:
    """The detection report page: metrics, PR curves, per-class AP once, samples."""
    sections = [
        Section("COCO metrics",
                note(f"{coco.num_images} images, {coco.num_detections} detections "
                     f"(all of them scored; the sample threshold below is for drawing only).")
                + table(("metric", "value"), coco.stats.items())),
        Section("Precision-recall curves", image_tag("Precision-recall curves", pr_curves)),
        Section("Per-class AP",
                table(("class", "AP@[.50:.95]"), _ranked_per_class_ap(coco))
                + image_tag("Per-class AP chart", per_class_ap)),
    ]
    if samples is not None:
        sections.append(Section("Sample detections",
                                note(samples_caption(score_threshold, max_boxes))
                                + image_tag("Sample detections", samples)))
    return page(title, header, sections)


def write_report(output_dir: str, coco, samples: list[dict], names: dict[int, str],
                 header: ReportHeader | None = None, *,
                 score_threshold: float = SAMPLE_SCORE_THRESHOLD,
                 max_boxes: int = MAX_BOXES_PER_SAMPLE) -> list[str]:
    """Write the PNGs and report.html into output_dir (local or s3://); returns their URIs."""
    header = header or ReportHeader(model="(detections file)", data="(annotations file)")
    files = {"pr_curves.png": pr_curves_png(coco), "per_class_ap.png": per_class_ap_png(coco)}
    if samples:
        files["samples.png"] = samples_png(samples, names, score_threshold, max_boxes)
    files["report.html"] = report_html(
        coco, header, pr_curves=files["pr_curves.png"], per_class_ap=files["per_class_ap.png"],
        samples=files.get("samples.png"), score_threshold=score_threshold,
        max_boxes=max_boxes).encode()
    return write_files(output_dir, files)
