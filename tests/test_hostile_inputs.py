"""Every `effdet` verb against a corpus of hostile inputs: each expected failure exits 2 with
one line that names the input, nothing prints a traceback, and an unexpected error exits 1 with
one line pointing at the log file holding the trace. In-process (`cli.main`), so TensorFlow and
kfp are imported once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efficientdet.cli import main

SECRET = "s3cr3t-pa55"
DEAD = "http://127.0.0.1:9"  # nothing listens: connection refused at once
MPIJOB = ["pipeline", "mpijob", "--dry-run", "--image", "img:1"]
SUBMIT = ["pipeline", "submit", "--experiment", "e", "--package", "{t}/gt.json",
          "--param", "train_annotations_uri=a", "--param", "train_images_uri=b",
          "--param", "val_annotations_uri=c", "--param", "val_images_uri=d"]
COCO = ["convert", "coco", "--annotations", "{t}/coco.json", "--images", "{t}/images",
        "--no-progress", "--workers", "1"]
DETECT = ["train", "--config", "synth-detection"]

# (case id, argv with {t} for the corpus folder, exit code, text the one line must contain)
CASES = [
    ("doctor-unknown-capability", ["doctor", "--require", "gpu,warp"], 2, "warp"),
    ("doctor-negative-timeout", ["doctor", "--timeout", "-1"], 2, "--timeout"),
    ("models-unknown-variant", ["models", "describe", "efficientdet-d42"], 2, "d42"),
    ("synth-zero-images", ["data", "synth-coco", "--output", "{t}/s", "--images", "0"], 2,
     "--images"),
    ("synth-nine-classes", ["data", "synth-coco", "--output", "{t}/s", "--classes", "9"], 2,
     "classes"),
    ("synth-output-under-a-file", ["data", "synth-coco", "--output", "{t}/file.txt/s"], 2,
     "file.txt"),
    ("convert-annotations-not-json", [*COCO[:3], "{t}/garbage.json", *COCO[4:], "--output",
                                      "{t}/o"], 2, "garbage.json: not valid JSON"),
    ("convert-annotations-missing", [*COCO[:3], "{t}/nope.json", *COCO[4:], "--output",
                                     "{t}/o"], 2, "nope.json"),
    ("convert-category-id-string", [*COCO[:3], "{t}/cat_str.json", *COCO[4:], "--output",
                                    "{t}/o"], 2, "categories[0] needs an integer"),
    ("convert-images-is-a-file", [*COCO[:5], "{t}/file.txt", *COCO[6:], "--output", "{t}/o"],
     2, "file.txt"),
    ("convert-output-under-a-file", [*COCO, "--output", "{t}/file.txt/o"], 2, "file.txt"),
    ("convert-output-not-a-dataset", [*COCO, "--output", "{t}/mixed"], 2, "notes.md"),
    ("convert-zero-shards", [*COCO, "--output", "{t}/o", "--shards", "0"], 2, "--shards"),
    ("convert-s3-down", [*COCO[:3], "s3://bucket/coco.json", *COCO[4:], "--output", "{t}/o"],
     2, "s3://bucket/coco.json"),
    ("convert-imagenet-missing-root", ["convert", "imagenet", "--root", "{t}/nope", "--output",
                                       "{t}/o"], 2, "nope"),
    ("train-negative-lr", [*DETECT, "--set", "optimizer.lr=-0.1"], 2, "'optimizer.lr'"),
    ("train-zero-epochs", [*DETECT, "--set", "train.epochs=0"], 2, "'train.epochs'"),
    ("train-zero-image-size", [*DETECT, "--set", "image_size=0"], 2, "'image_size'"),
    ("train-recipe-file", ["train", "--config", "{t}/recipe.yaml"], 2, "'optimizer.lr'"),
    ("train-unknown-recipe", ["train", "--config", "no-such-recipe"], 2, "no-such-recipe"),
    ("train-unknown-override-key", [*DETECT, "--set", "data.train={t}/data", "--set",
                                    "model_overrides.dropout=0.5"], 2,
     "'model_overrides.dropout'"),
    ("train-missing-data", [*DETECT, "--set", "data.train={t}/nope"], 2,
     "'data.train': {t}/nope: no such dataset directory"),
    ("train-storage-down", [*DETECT, "--set", "data.train=s3://bucket/set"], 2,
     "s3://bucket/set/label_map.json"),
    ("evaluate-bbox-wrong-length", ["evaluate", "--annotations", "{t}/gt.json", "--detections",
                                    "{t}/dets_bbox.json"], 2, "detections[0].bbox"),
    ("evaluate-score-not-a-number", ["evaluate", "--annotations", "{t}/gt.json",
                                     "--detections", "{t}/dets_score.json"], 2,
     "detections[0].score"),
    ("evaluate-category-id-float", ["evaluate", "--annotations", "{t}/gt.json",
                                    "--detections", "{t}/dets_cat.json"], 2,
     "detections[0].category_id"),
    ("evaluate-ground-truth-malformed", ["evaluate", "--annotations", "{t}/gt_bad.json",
                                         "--detections", "{t}/dets_bbox.json"], 2,
     "annotations.images[0]"),
    ("evaluate-incomplete-dataset", ["evaluate", "--model", "{t}/nope", "--data",
                                     "{t}/incomplete"], 2, "no report.json"),
    ("evaluate-zero-batch", ["evaluate", "--model", "m", "--data", "d", "--batch-size", "0"], 2,
     "--batch-size"),
    ("export-missing-model", ["export", "--model", "{t}/nope", "--output", "{t}/x"], 2, "nope"),
    ("export-threshold-above-one", ["export", "--model", "m", "--output", "o",
                                    "--score-threshold", "2"], 2, "--score-threshold"),
    ("predict-missing-model", ["predict", "--model", "{t}/nope", "{t}/file.txt"], 2, "nope"),
    ("predict-zero-top-k", ["predict", "--model", "m", "x", "--top-k", "0"], 2, "--top-k"),
    ("predict-nan-threshold", ["predict", "--model", "m", "x", "--score-threshold", "nan"], 2,
     "--score-threshold"),
    ("benchmark-bad-batch-sizes", ["benchmark", "--model", "m", "--batch-sizes", "1,x"], 2,
     "--batch-sizes"),
    ("benchmark-zero-iterations", ["benchmark", "--model", "m", "--iterations", "0"], 2,
     "--iterations"),
    ("compile-credentials-in-uri", ["pipeline", "compile", "-o", "{t}/p.yaml", "--mlflow-uri",
                                    f"http://user:{SECRET}@mlflow:5000"], 2, "credentials"),
    ("compile-output-under-a-file", ["pipeline", "compile", "-o", "{t}/file.txt/p.yaml"], 2,
     "file.txt"),
    ("submit-kfp-unreachable", [*SUBMIT, "--host", DEAD], 2, f"--host {DEAD}"),
    ("submit-credentials-in-host", [*SUBMIT, "--host", f"http://u:{SECRET}@kfp"], 2,
     "credentials"),
    ("run-local-negative-workers", ["pipeline", "run-local", "--param", "workers=-2"], 2,
     "--param workers"),
    ("run-local-nan-threshold", ["pipeline", "run-local", "--param", "threshold=nan"], 2,
     "--param threshold"),
    ("submit-bad-worker-memory", [*SUBMIT, "--host", DEAD, "--param", "worker_memory=16 GB"], 2,
     "--param worker_memory"),
    ("mpijob-empty-run-id", [*MPIJOB, "--run-id", "", "--", "--config", "x"], 2, "--run-id"),
    ("mpijob-negative-deadline", [*MPIJOB, "--deadline", "-5", "--", "x"], 2, "--deadline"),
    ("mpijob-negative-backoff", [*MPIJOB, "--backoff-limit", "-1", "--", "x"], 2,
     "--backoff-limit"),
    ("mpijob-bad-cpu", [*MPIJOB, "--cpu", "4cores", "--", "x"], 2, "cpu: must be a Kubernetes"),
    ("mpijob-bad-memory", [*MPIJOB, "--memory", "16 GB", "--", "x"], 2, "memory"),
    ("mpijob-bad-namespace", [*MPIJOB, "--namespace", "Team_A", "--", "x"], 2, "namespace"),
    ("mpijob-bad-env-name", [*MPIJOB, "--env", "1ST=x", "--", "x"], 2, "env[0]"),
    ("mpijob-bad-secret-name", [*MPIJOB, "--secret-env", "A=My_Secret:key", "--", "x"], 2,
     "secret name[0]"),
    ("mpijob-bad-node-selector", [*MPIJOB, "--node-selector", "pool=gpu nodes", "--", "x"], 2,
     "node selector"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from efficientdet.data import synthetic

    t = tmp_path_factory.mktemp("hostile")
    synthetic.write_synthetic_coco(t, images=2, classes=2, seed=1, image_size=64)
    (t / "annotations.json").rename(t / "coco.json")
    (t / "garbage.json").write_text("{not json")
    (t / "cat_str.json").write_text(json.dumps({"images": [], "categories": [
        {"id": "1", "name": "a"}]}))
    (t / "file.txt").write_text("a file, not a directory")
    (t / "mixed").mkdir()
    (t / "mixed" / "notes.md").write_text("mine")
    (t / "recipe.yaml").write_text("data: {train: x}\noptimizer: {lr: -0.1}\n")
    (t / "data").mkdir()
    (t / "data" / "label_map.json").write_text(json.dumps({"classes": [{"id": 1, "name": "a"}]}))
    (t / "incomplete").mkdir()
    (t / "incomplete" / "data-00000-of-00001.tfrecord.partial").write_bytes(b"half")
    gt = {"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4],
                           "area": 16.0, "iscrowd": 0}]}
    (t / "gt.json").write_text(json.dumps(gt))
    (t / "gt_bad.json").write_text(json.dumps({**gt, "images": [1]}))
    det = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "score": 0.9}
    (t / "dets_bbox.json").write_text(json.dumps([{**det, "bbox": [1, 1, 4]}]))
    (t / "dets_score.json").write_text(json.dumps([{**det, "score": "high"}]))
    (t / "dets_cat.json").write_text(json.dumps([{**det, "category_id": 1.0}]))
    return t


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """S3 and MLflow endpoints that refuse connections; crash logs into the test's folder."""
    for key, value in {"AWS_ENDPOINT_URL": DEAD, "AWS_MAX_ATTEMPTS": "1",
                       "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "EFFDET_TRACKING": "off", "EFFDET_LOG_DIR": str(tmp_path / "logs")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _run(argv: list[str], capsys) -> tuple[int, list[str], str]:
    code = main(argv)  # argparse's own usage errors are returned as exit codes too
    out = capsys.readouterr()
    return code, [line for line in out.err.splitlines() if line.strip()], out.out + out.err


@pytest.mark.parametrize("argv, code, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_one_line_no_traceback(corpus, offline, capsys, argv, code, needle):
    argv = [a.replace("{t}", str(corpus)) for a in argv]
    needle = needle.replace("{t}", str(corpus))
    got, lines, everything = _run(argv, capsys)
    assert got == code, everything
    assert len(lines) == 1, lines
    assert lines[0].startswith("effdet") and "error" in lines[0], lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in everything and SECRET not in everything
    assert not (offline / "logs").exists()  # an expected failure is no crash


def test_nothing_half_written_by_refused_commands(corpus, offline, capsys):
    assert not (corpus / "o").exists() and not (corpus / "p.yaml").exists()
    assert sorted(p.name for p in (corpus / "mixed").iterdir()) == ["notes.md"]


def test_unexpected_error_is_one_line_and_a_log_file(offline, capsys, monkeypatch):
    from efficientdet.cli import doctor

    def broken(args):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(doctor, "run", broken)
    code, lines, everything = _run(["doctor"], capsys)
    assert code == 1 and len(lines) == 1 and "Traceback" not in everything
    assert lines[0].startswith("effdet doctor: internal error: RuntimeError: a bug; full trace in ")
    log = Path(lines[0].rsplit(" ", 1)[-1])
    assert log.parent == offline / "logs"
    assert "Traceback" in log.read_text() and "second line" in log.read_text()


def test_mpijob_dry_run_at_the_edges_prints_a_valid_mpijob(capsys):
    import yaml

    from tests.test_manifests import K8S_VERSIONS, validate_mpijob

    argv = [*MPIJOB, "--run-id", "run 1/ünï", "--namespace", "team-a", "--workers", "3",
            "--gpus-per-worker", "2", "--cpu", "500m", "--memory", "1.5Gi", "--shm-size", "1e3",
            "--deadline", "1", "--backoff-limit", "0", "--env", "_A1=x: {y}", "--secret-env",
            "B=my.secret:tls.key", "--node-selector", "example.com/pool=gpu_a-1",
            "--service-account", "sa.one", "--", "--config", "synth-detection"]
    assert main(argv) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    validate_mpijob(job, K8S_VERSIONS[-1])
    assert job["metadata"]["namespace"] == "team-a"
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 1
