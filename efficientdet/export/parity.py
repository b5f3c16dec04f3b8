"""Parity check: the exported model scores (almost) what the source model scores.

Both are evaluated on the same records with the same COCO settings; the AP difference is
reported and a drop beyond `max_ap_drop` (absolute) fails the export.
"""

from __future__ import annotations

from typing import Any

from efficientdet.data.dataset import ConvertedDataset
from efficientdet.evaluation.evaluate import evaluate_runner


def parity_check(source_runner, exported_runner, data_uri: str, *, max_ap_drop: float = 0.01,
                 max_images: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    with ConvertedDataset.open(data_uri) as dataset:  # s3:// shards are fetched once for both
        source, exported = (
            evaluate_runner(runner, data_uri, batch_size=batch_size, max_images=max_images,
                            dataset=dataset)["result"]
            for runner in (source_runner, exported_runner))
    metric = "AP" if source["task"] == "detection" else "top1"
    drop = source["metrics"][metric] - exported["metrics"][metric]
    return {"metric": metric, "source": source["metrics"][metric],
            "exported": exported["metrics"][metric], "drop": drop,
            "max_drop": max_ap_drop, "passed": bool(drop <= max_ap_drop),
            "num_images": source.get("num_images"),
            "source_metrics": source["metrics"], "exported_metrics": exported["metrics"]}
