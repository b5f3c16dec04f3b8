"""`effdet benchmark` prints latency percentiles and throughput for an exported SavedModel."""

from __future__ import annotations

import json

from efficientdet.cli import main
from tests.test_export_saved_model import tiny_detector, tiny_meta


def test_benchmark_saved_model_prints_latency_and_throughput(tmp_path, capsys, s3_bucket):
    """The SavedModel goes to S3 and the benchmark reads it back from there."""
    from efficientdet import storage
    from efficientdet.export.saved_model import export_saved_model

    uri = f"s3://{s3_bucket}/exports/sm"
    export_saved_model(tiny_detector(), tiny_meta(), uri)
    assert storage.exists(f"{uri}/saved_model.pb") and storage.exists(f"{uri}/label_map.json")
    assert main(["benchmark", "--model", uri, "--batch-sizes", "1,2",
                 "--warmup", "1", "--iterations", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"] == "SavedModelRunner"
    assert [r["batch_size"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["throughput_img_s"] > 0 and r["image_size"] == [128, 128]
    assert main(["benchmark", "--model", uri, "--batch-sizes", "1",
                 "--warmup", "0", "--iterations", "2"]) == 0
    text = capsys.readouterr().out
    assert "p50 ms" in text and "img/s" in text


def test_benchmark_rejects_bad_batch_sizes(tmp_path, capsys):
    assert main(["benchmark", "--model", str(tmp_path), "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
