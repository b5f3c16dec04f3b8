#!/usr/bin/env bash
# `make demo`: the whole detection pipeline on this machine, end to end.
#   synthetic COCO-style shapes (train + val) -> the Kubeflow pipeline under kfp.local:
#   conversion -> 2-rank Horovod training (gloo, validation AP every 200 steps) -> COCO evaluation -> export with parity check
#   -> MLflow registration, all tracked in a local SQLite MLflow store.
# Ends by printing the AP, where the artifacts are and the command that opens the MLflow UI.
# Knobs (env): DEMO_OUTPUT (default demo-output), DEMO_STEPS (training steps, default 400),
# DEMO_TRAIN_IMAGES (default 256), DEMO_VAL_IMAGES (default 32), DEMO_THRESHOLD (AP needed for
# the `champion` alias, default 0.1; the AP of one run varies with the seed, see
# docs/performance.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
EFFDET="$VENV/bin/effdet"
PY="$VENV/bin/python"
OUT="${DEMO_OUTPUT:-$ROOT/demo-output}"
STEPS="${DEMO_STEPS:-400}"
TRAIN_IMAGES="${DEMO_TRAIN_IMAGES:-256}"
VAL_IMAGES="${DEMO_VAL_IMAGES:-32}"
THRESHOLD="${DEMO_THRESHOLD:-0.1}"
IMAGE_SIZE=128   # the model's input
SYNTH_SIZE=192   # the synthetic images (longest side), downscaled to IMAGE_SIZE

say() { printf '\n[demo] %s\n' "$*" >&2; }
start=$(date +%s)

cd "$ROOT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -rf "$OUT/data" "$OUT/pipeline-root" "$OUT/mlflow.db" "$OUT/mlartifacts" "$OUT/summary.json"

say "1/3 synthetic data: $TRAIN_IMAGES train + $VAL_IMAGES val images (${SYNTH_SIZE}px shapes, trained at ${IMAGE_SIZE}px)"
"$EFFDET" data synth-coco --output "$OUT/data/raw-train" --images "$TRAIN_IMAGES" \
  --image-size "$SYNTH_SIZE" --seed 0
"$EFFDET" data synth-coco --output "$OUT/data/raw-val" --images "$VAL_IMAGES" \
  --image-size "$SYNTH_SIZE" --seed 1

say "2/3 MLflow: SQLite store $OUT/mlflow.db, artifacts in $OUT/mlartifacts"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"
export MLFLOW_EXPERIMENT_NAME="efficientdet-demo"
# The experiment's artifact root is fixed here, so artifacts land under demo-output/ whatever
# directory the steps run in.
"$PY" - "$OUT" <<'EOF'
import sys
from pathlib import Path

from mlflow import MlflowClient

out = Path(sys.argv[1])
client = MlflowClient()
if client.get_experiment_by_name("efficientdet-demo") is None:
    client.create_experiment("efficientdet-demo",
                             artifact_location=(out / "mlartifacts").as_uri())
EOF

say "3/3 the detection pipeline under kfp.local (2 Horovod ranks, $STEPS steps)"
set +e
"$EFFDET" pipeline run-local --pipeline detection \
  --pipeline-root "$OUT/pipeline-root" --summary-json "$OUT/summary.json" \
  --param "train_annotations_uri=$OUT/data/raw-train/annotations.json" \
  --param "train_images_uri=$OUT/data/raw-train/images" \
  --param "val_annotations_uri=$OUT/data/raw-val/annotations.json" \
  --param "val_images_uri=$OUT/data/raw-val/images" \
  --param recipe=synth-detection --param image_size=$IMAGE_SIZE --param steps="$STEPS" \
  --param batch_size=4 --param workers=2 --param gpus_per_worker=0 \
  --param amp=false --param xla=false --param num_shards=2 --param eval_interval=200 \
  --param export_formats=saved_model,onnx \
  --param registered_model_name=efficientdet-demo --param metric_name=AP \
  --param threshold="$THRESHOLD" --param alias=champion
status=$?
set -e

elapsed=$(( $(date +%s) - start ))
"$PY" - "$OUT" "$status" "$elapsed" "$THRESHOLD" <<'EOF'
import json
import sys
from pathlib import Path

out, status, elapsed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
threshold = float(sys.argv[4])
summary_file = out / "summary.json"
summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
steps = summary.get("steps", {})
print()
print("=" * 72)
if status != 0:
    print(f"demo FAILED after {elapsed // 60}m{elapsed % 60:02d}s: "
          f"{summary.get('error') or 'see the log above'}")
else:
    ev = next((s for name, s in steps.items() if name.startswith("evaluate")), None)
    ap = ev["metrics"].get("AP") if ev else None
    print(f"demo finished in {elapsed // 60}m{elapsed % 60:02d}s")
    print(f"AP (COCO, IoU .50:.95) on the validation set: "
          f"{ap:.4f}" if ap is not None else "AP: not found in the evaluate step's MLflow run")
    reg = next((s for name, s in steps.items() if name.startswith("register")), None)
    if reg:
        tags = reg["tags"]
        alias = tags.get("effdet.alias") or f"none (AP below the threshold {threshold})"
        print(f"registered model: {tags.get('effdet.registered_model')} "
              f"version {tags.get('effdet.registered_version')}, alias: {alias}"
              + (f" (AP >= {threshold})" if tags.get("effdet.alias") else ""))
print(f"pipeline artifacts: {out / 'pipeline-root'}")
print(f"MLflow store:       {out / 'mlflow.db'} (artifacts in {out / 'mlartifacts'})")
print(f"parent run:         {summary.get('parent_run_id')}")
for name, s in steps.items():
    print(f"  step {name:<10} run {s['run_id']} {s['status']}")
print("open the MLflow UI:")
print(f"  {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri sqlite:///{out / 'mlflow.db'} --port 5000")
print("=" * 72)
EOF
exit "$status"
