"""The compiled pipelines: every step, artifacts wired, GPU and Kubernetes settings on the
training step, caching and retries; `effdet pipeline` CLI input handling."""

from __future__ import annotations

import pytest
import yaml

from efficientdet.cli import main

STEPS = {"convert", "convert-2", "train", "evaluate", "export", "register"}


def _compile(tmp_path, *extra, pipeline="detection"):
    out = tmp_path / f"{pipeline}.yaml"
    assert main(["pipeline", "compile", "--pipeline", pipeline, "-o", str(out), *extra]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def _wire(task: dict, name: str) -> tuple[str, str]:
    ref = task["inputs"]["artifacts"][name]["taskOutputArtifact"]
    return ref["producerTask"], ref["outputArtifactKey"]


@pytest.mark.parametrize("pipeline", ["detection", "classification"])
def test_compiled_pipeline_has_every_step_with_artifacts_wired(tmp_path, pipeline):
    spec, _ = _compile(tmp_path, pipeline=pipeline)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == STEPS
    assert _wire(tasks["train"], "train_data") == ("convert", "dataset")
    assert _wire(tasks["train"], "val_data") == ("convert-2", "dataset")
    assert _wire(tasks["evaluate"], "model") == ("train", "model")
    assert _wire(tasks["evaluate"], "val_data") == ("convert-2", "dataset")
    assert _wire(tasks["export"], "model") == ("train", "model")
    assert _wire(tasks["export"], "val_data") == ("convert-2", "dataset")  # parity data
    assert _wire(tasks["register"], "model") == ("train", "model")
    assert _wire(tasks["register"], "exported") == ("export", "exported")
    assert _wire(tasks["register"], "eval_metrics") == ("evaluate", "metrics")
    # typed outputs: Dataset, Model, Metrics (compare view), HTML and Markdown reports
    outs = {name: spec["components"][f"comp-{name}"]["outputDefinitions"]["artifacts"]
            for name in ("convert", "train", "evaluate", "export", "register")}
    assert outs["convert"]["dataset"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert outs["train"]["model"]["artifactType"]["schemaTitle"] == "system.Model"
    assert outs["evaluate"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outs["evaluate"]["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outs["register"]["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    # the KFP run and task identity reach every step (MPIJob name, MLflow tags)
    for name in STEPS:
        params = tasks[name]["inputs"]["parameters"]
        assert params["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
        assert params["kfp_task"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}"


def test_training_step_has_gpu_and_kubernetes_settings(tmp_path):
    spec, platform = _compile(tmp_path, "--train-step-gpus", "2",
                              "--gpu-node-selector", "nvidia.com/gpu.product=A100")
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "2"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = k8s["exec-train"]
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "A100"}
    fields = {f["name"]: f["fieldPath"] for f in train["fieldPathAsEnv"]}
    assert fields == {"POD_NAME": "metadata.name", "POD_UID": "metadata.uid",
                      "POD_NAMESPACE": "metadata.namespace"}
    # credentials come from Secrets on every step, never as literals
    for name in ("exec-convert", "exec-train", "exec-evaluate", "exec-export", "exec-register"):
        secrets = {s["secretName"]: s for s in k8s[name]["secretAsEnv"]}
        assert {e["envVar"] for e in secrets["effdet-s3"]["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert secrets["effdet-mlflow"]["optional"] is True
    # the cluster's settings ConfigMap on every step, each key optional
    for name in ("exec-convert", "exec-train", "exec-evaluate", "exec-export", "exec-register"):
        (cm,) = k8s[name]["configMapAsEnv"]
        assert cm["configMapName"] == "effdet-pipeline-env" and cm["optional"] is True
        assert {"MLFLOW_TRACKING_URI", "EFFDET_TRAIN_IMAGE", "EFFDET_MPI_WORKERS"} <= {
            e["envVar"] for e in cm["keyToEnv"]}
    # no GPU on the other steps
    for name in ("exec-convert", "exec-evaluate", "exec-export", "exec-register"):
        assert "accelerator" not in (spec["deploymentSpec"]["executors"][name]["container"]
                                     .get("resources") or {})
        assert "tolerations" not in k8s[name]
    text = yaml.safe_dump(spec)
    assert "SECRET_ACCESS_KEY:" not in text  # not set as a plain env value anywhere


def test_caching_and_retries(tmp_path):
    spec, _ = _compile(tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["convert"]["cachingOptions"] == {"enableCache": True}
    assert tasks["train"].get("cachingOptions", {}).get("enableCache") in (None, False)
    assert tasks["register"].get("cachingOptions", {}).get("enableCache") in (None, False)
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 1  # safe: the MPIJob is adopted
    assert tasks["register"]["retryPolicy"]["maxRetryCount"] == 2


def test_ui_parameters_and_defaults(tmp_path):
    spec, _ = _compile(tmp_path)
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("model_name", "train_annotations_uri", "val_images_uri", "epochs", "steps",
                 "batch_size", "workers", "gpus_per_worker", "amp", "xla", "threshold",
                 "metric_name", "alias", "registered_model_name"):
        assert name in params, name
    assert params["amp"]["parameterType"] == "BOOLEAN"
    for name in ("amp", "xla", "steps", "epochs", "batch_size", "image_size", "model_name"):
        # unset in the UI = the recipe's value: optional, no default that would replace it
        assert params[name].get("isOptional") is True and "defaultValue" not in params[name]
    train_inputs = spec["components"]["comp-train"]["inputDefinitions"]["parameters"]
    assert train_inputs["xla"].get("isOptional") is True
    assert params["threshold"]["parameterType"] == "NUMBER_DOUBLE"
    assert "defaultValue" not in params["train_annotations_uri"]  # required in the UI


KEEP_RECIPE = ("model_name", "image_size", "steps", "epochs", "batch_size", "amp", "xla",
               "learning_rate", "ema_decay", "mlflow_experiment", "init_from", "workers", "gpus_per_worker", "train_image", "worker_cpu",
               "worker_memory", "node_selector", "deadline_seconds", "num_shards",
               "eval_batch_size", "work_uri")


@pytest.mark.parametrize("pipeline", ["detection", "classification"])
def test_parameters_carry_descriptions_and_unset_means_keep_the_recipe(tmp_path, pipeline):
    spec, _ = _compile(tmp_path, pipeline=pipeline)
    params = spec["root"]["inputDefinitions"]["parameters"]
    # the docstring's Args: section becomes each parameter's description in the UI
    assert all(p.get("description") for p in params.values()), \
        sorted(n for n, p in params.items() if not p.get("description"))
    # optional without a placeholder default: a run that leaves them out keeps the recipe's value
    for name in KEEP_RECIPE:
        assert params[name].get("isOptional") is True, name
        assert "defaultValue" not in params[name], name
    assert params["amp"]["parameterType"] == "BOOLEAN"
    assert params["steps"]["parameterType"] == "NUMBER_INTEGER"
    assert params["learning_rate"]["parameterType"] == "NUMBER_DOUBLE"
    # the experiment reaches every step: whichever runs first makes the parent run in it
    tasks = spec["root"]["dag"]["tasks"]
    assert {name for name, t in tasks.items() if t["inputs"]["parameters"].get(
        "mlflow_experiment") == {"componentInputParameter": "mlflow_experiment"}} == set(tasks)
    # and the training step declares them optional too, bound to the pipeline's parameters
    train_inputs = spec["components"]["comp-train"]["inputDefinitions"]["parameters"]
    bound = spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    for name in ("amp", "xla", "steps", "model_name", "workers", "gpus_per_worker",
                 "learning_rate", "ema_decay"):
        assert train_inputs[name].get("isOptional") is True and "defaultValue" not in \
            train_inputs[name], name
        assert bound[name] == {"componentInputParameter": name}


def test_local_options_leave_cluster_settings_out(tmp_path):
    from kfp import compiler

    from efficientdet.kfp_pipelines import ClusterOptions, build

    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(build("detection", ClusterOptions.local()), str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    executors = (docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
                 if len(docs) > 1 else {})
    assert all("secretAsEnv" not in e for e in executors.values())
    env = docs[0]["deploymentSpec"]["executors"]["exec-train"]["container"].get("env") or []
    assert not [e for e in env if e["name"] == "MLFLOW_TRACKING_URI"]


@pytest.mark.parametrize("argv, message", [
    (["submit", "--host", "http://127.0.0.1:9", "--experiment", "e", "--param", "nope=1"],
     "not a parameter"),
    (["submit", "--host", "http://127.0.0.1:9", "--experiment", "e", "--param", "workers=two"],
     "workers='two': not a valid integer"),
    (["submit", "--host", "http://127.0.0.1:9", "--experiment", "e", "--param", "workers=2"],
     "missing --param for: train_annotations_uri"),
    (["run-local", "--param", "amp=maybe"], "amp='maybe'"),
    (["compile", "-o", "x.yaml", "--gpu-node-selector", "novalue"], "--gpu-node-selector"),
    (["mpijob", "--image", "img"], "no training arguments"),
    (["mpijob", "--dry-run", "--image", "img", "--secret-env", "A=b", "--", "--config", "x"],
     "ENV=SECRET:KEY"),
    (["mpijob", "--dry-run", "--image", "img", "--env", "AWS_SECRET_ACCESS_KEY=x", "--", "x"],
     "looks like a credential"),
])
def test_cli_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert main(["pipeline", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_param_coercion_follows_declared_types():
    from efficientdet.kfp_pipelines import build
    from efficientdet.kfp_pipelines.params import coerce

    p = build("detection")
    got = coerce(p, ["workers=4", "amp=false", "threshold=0.25", "model_name=efficientdet-d1",
                     "epochs=3", "learning_rate=0.02", "ema_decay=0", "mlflow_experiment=team"])
    assert got == {"workers": 4, "amp": False, "threshold": 0.25,
                   "model_name": "efficientdet-d1", "epochs": 3.0, "learning_rate": 0.02,
                   "ema_decay": 0.0, "mlflow_experiment": "team"}
    for pair, message in (("learning_rate=0", "learning_rate"), ("ema_decay=1", "ema_decay")):
        with pytest.raises(ValueError, match=message):
            coerce(p, [pair])


def test_mpijob_dry_run_prints_yaml(capsys):
    argv = ["pipeline", "mpijob", "--dry-run", "--image", "reg/effdet-train:1", "--workers", "2",
            "--gpus-per-worker", "8", "--toleration", "nvidia.com/gpu:NoSchedule",
            "--secret-env", "AWS_SECRET_ACCESS_KEY=s3:secret", "--deadline", "3600",
            "--run-id", "r1", "--", "--config", "efficientdet-d0-coco"]
    assert main(argv) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert job["kind"] == "MPIJob" and job["spec"]["slotsPerWorker"] == 8
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 3600
    cmd = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("-np") + 1] == "16"
    assert cmd[-4:] == ["effdet", "train", "--config", "efficientdet-d0-coco"]
    tol = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["tolerations"]
    assert tol == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
