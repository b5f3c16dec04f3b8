"""Evaluation reports people look at: PR curves, per-class AP chart, sample detections.

PNG files plus one self-contained HTML page (images inlined as base64) that MLflow stores as an
artifact and Kubeflow shows as an HTML output. matplotlib with the Agg backend (no display).
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

REPORT_FILES = ("pr_curves.png", "per_class_ap.png", "samples.png", "report.html")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def pr_curves_png(coco) -> bytes:
    """Precision vs recall averaged over classes at IoU 0.50, 0.75 and 0.50:0.95
    (area all, 100 detections), from COCOeval's eval['precision'] [T, R, K, A, M]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    prec = coco.precision[:, :, :, 0, -1]  # [T, R, K]
    recall = coco.recall_thresholds
    ious = list(np.round(coco.iou_thresholds, 2))

    def mean_over_classes(p):  # [R, K] -> [R], ignoring classes without ground truth (-1)
        masked = np.where(p > -1, p, np.nan)
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.nanmean(masked, axis=-1)) if masked.size else np.zeros(len(recall))

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
    return _png(fig)


def per_class_ap_png(coco) -> bytes:
    plt = _plt()
    items = [(n, ap) for n, ap in coco.per_class_ap.items() if ap is not None]
    items.sort(key=lambda x: x[1])
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.25 * len(items) + 1)))
    if items:
        ax.barh([n for n, _ in items], [ap for _, ap in items], color="#4878d0")
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP@[.50:.95]")
    ax.set_title("Per-class AP")
    return _png(fig)


def samples_png(samples: list[dict], names: dict[int, str], score_threshold: float = 0.3,
                columns: int = 4) -> bytes:
    """Grid of images: predictions (red, with score) over ground truth (green)."""
    plt = _plt()
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
        for (y0, x0, y1, x1), sc, c in zip(s["pred_boxes"], s["pred_scores"],
                                           s["pred_category_ids"]):
            if sc < score_threshold:
                continue
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red",
                                       linewidth=1.0))
            ax.text(x0, y0, f"{names.get(int(c), c)} {sc:.2f}", color="white", fontsize=6,
                    bbox={"facecolor": "red", "alpha": 0.6, "pad": 1, "linewidth": 0})
        ax.set_title(f"image {s['image_id']}", fontsize=8)
    return _png(fig)


def report_html(coco, images: dict[str, bytes], title: str = "EfficientDet evaluation") -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                   for k, v in coco.stats.items())
    per_class = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{'n/a' if v is None else f'{v:.4f}'}</td></tr>"
        for k, v in coco.per_class_ap.items())
    figs = "".join(
        f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode()}"/>'
        for name, data in images.items())
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{coco.num_images} images, {coco.num_detections} "
        f"detections</p><h2>COCO metrics</h2><table>{rows}</table>"
        f"<h2>Per-class AP</h2><table>{per_class}</table>{figs}</body></html>")


def write_report(output_dir: str, coco, samples: list[dict], names: dict[int, str]) -> list[str]:
    """Write the PNGs and report.html into output_dir (local or s3://); returns their URIs."""
    from efficientdet import storage

    images = {"Precision-recall curves": pr_curves_png(coco),
              "Per-class AP": per_class_ap_png(coco)}
    files = {"pr_curves.png": images["Precision-recall curves"],
             "per_class_ap.png": images["Per-class AP"]}
    if samples:
        images["Sample detections (red) and ground truth (green)"] = files["samples.png"] = \
            samples_png(samples, names)
    files["report.html"] = report_html(coco, images).encode()
    out = []
    for name, data in files.items():
        uri = storage.join(str(output_dir), name)
        storage.write_bytes(uri, data)
        out.append(uri)
    return out
