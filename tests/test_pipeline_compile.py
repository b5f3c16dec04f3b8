"""The compiled pipelines: every step, artifacts wired, resources where they belong (a GPU on
export-tftrt only, CPU/memory on every step), Kubernetes settings, caching and retries;
`effdet pipeline` CLI input handling."""

from __future__ import annotations

import pytest
import yaml

from efficientdet.cli import main

STEPS = {"convert-train", "convert-val", "train", "evaluate", "export", "register"}
EXECUTORS = ("exec-convert-train", "exec-convert-val", "exec-train", "exec-evaluate",
             "exec-export", "exec-export-tftrt", "exec-register", "exec-close-run")
TFTRT_CONDITION = "condition-2"  # KFP numbers groups: exit-handler-1 comes first


def _compile(tmp_path, *extra, pipeline="detection"):
    out = tmp_path / f"{pipeline}.yaml"
    assert main(["pipeline", "compile", "--pipeline", pipeline, "-o", str(out), *extra]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def _steps(spec: dict) -> dict:
    """The tasks inside the pipeline's exit handler (every step but close-run), by name."""
    handler = spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    return spec["components"][handler]["dag"]["tasks"]


def _wire(task: dict, name: str) -> tuple[str, str]:
    ref = task["inputs"]["artifacts"][name]["taskOutputArtifact"]
    return ref["producerTask"], ref["outputArtifactKey"]


@pytest.mark.parametrize("pipeline", ["detection", "classification"])
def test_compiled_pipeline_has_every_step_with_artifacts_wired(tmp_path, pipeline):
    spec, _ = _compile(tmp_path, pipeline=pipeline)
    assert set(spec["root"]["dag"]["tasks"]) == {"exit-handler-1", "close-run"}
    tasks = _steps(spec)
    assert set(tasks) == STEPS | {TFTRT_CONDITION}  # export-tftrt when asked
    assert _wire(tasks["train"], "train_data") == ("convert-train", "dataset")
    assert _wire(tasks["train"], "val_data") == ("convert-val", "dataset")
    assert _wire(tasks["evaluate"], "model") == ("train", "model")
    assert _wire(tasks["evaluate"], "val_data") == ("convert-val", "dataset")
    assert _wire(tasks["export"], "model") == ("train", "model")
    assert _wire(tasks["export"], "val_data") == ("convert-val", "dataset")  # parity data
    assert _wire(tasks["register"], "model") == ("train", "model")
    assert _wire(tasks["register"], "exported") == ("export", "exported")
    assert _wire(tasks["register"], "eval_metrics") == ("evaluate", "metrics")
    # typed outputs: Dataset, Model, Metrics (compare view), HTML and Markdown reports
    outs = {name: spec["components"][f"comp-{name}"]["outputDefinitions"]["artifacts"]
            for name in ("convert-train", "train", "evaluate", "export", "register")}
    assert outs["convert-train"]["dataset"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert outs["train"]["model"]["artifactType"]["schemaTitle"] == "system.Model"
    assert outs["evaluate"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outs["evaluate"]["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outs["register"]["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    # the KFP run and task identity reach every step (MPIJob name, MLflow tags)
    for name in STEPS:
        params = tasks[name]["inputs"]["parameters"]
        assert params["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
        assert params["kfp_task"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}"


def test_train_step_is_a_controller_without_a_gpu(tmp_path):
    spec, platform = _compile(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train"]["container"]
    assert "accelerator" not in train["resources"]
    assert "tolerations" not in k8s["exec-train"] and "nodeSelector" not in k8s["exec-train"]
    assert train["resources"]["resourceCpuRequest"] == "500m"
    assert train["resources"]["resourceMemoryRequest"] == "1Gi"
    # its own identity, for the MPIJob's ownerReferences
    fields = {f["name"]: f["fieldPath"] for f in k8s["exec-train"]["fieldPathAsEnv"]}
    assert fields == {"POD_NAME": "metadata.name", "POD_UID": "metadata.uid",
                      "POD_NAMESPACE": "metadata.namespace"}
    # a GPU on the TF-TRT export only
    gpu_steps = sorted(name for name, e in executors.items()
                       if "accelerator" in (e["container"].get("resources") or {}))
    assert gpu_steps == ["exec-export-tftrt"]
    assert "tolerations" not in k8s["exec-export"]


def test_every_step_has_cpu_and_memory_requests_from_one_table(tmp_path):
    spec, _ = _compile(tmp_path, "--step-resources",
                       '{"evaluate": {"cpu": "8", "memory": "32Gi", "cpu_limit": "16"}}')
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == set(EXECUTORS)
    for name in EXECUTORS:
        resources = executors[name]["container"]["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"], name
        assert resources["resourceMemoryLimit"], name
    evaluate = executors["exec-evaluate"]["container"]["resources"]
    assert (evaluate["resourceCpuRequest"], evaluate["resourceMemoryRequest"],
            evaluate["resourceCpuLimit"]) == ("8", "32Gi", "16")
    assert executors["exec-convert-val"]["container"]["resources"]["resourceCpuRequest"] == "2"


def test_tftrt_export_is_a_gpu_step_on_the_training_image_when_asked(tmp_path):
    spec, platform = _compile(tmp_path, "--gpu-node-selector", "nvidia.com/gpu.product=A100",
                              "--train-image", "reg.example/effdet-train:9")
    condition = _steps(spec)[TFTRT_CONDITION]
    assert condition["taskInfo"]["name"] == "tf-trt-asked"
    # the export step says whether export_formats asked for tf-trt
    assert condition["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--export-Output'] == true"
    inner = spec["components"][f"comp-{TFTRT_CONDITION}"]["dag"]["tasks"]
    assert set(inner) == {"export-tftrt"}
    assert inner["export-tftrt"]["taskInfo"]["name"] == "export-tftrt"
    container = spec["deploymentSpec"]["executors"]["exec-export-tftrt"]["container"]
    assert container["image"] == "reg.example/effdet-train:9"
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert container["resources"]["accelerator"]["resourceCount"] == "1"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-export-tftrt"]
    assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "A100"}
    cpu_image = spec["deploymentSpec"]["executors"]["exec-export"]["container"]["image"]
    assert "effdet-cpu" in cpu_image
    # each step knows its image (MLflow tag effdet.image)
    envs = {name: {e["name"]: e["value"] for e in e_["container"].get("env", [])}
            for name, e_ in spec["deploymentSpec"]["executors"].items()}
    assert envs["exec-export-tftrt"]["EFFDET_IMAGE"] == "reg.example/effdet-train:9"
    assert envs["exec-export"]["EFFDET_IMAGE"] == cpu_image


def test_steps_get_secrets_and_the_settings_config_map(tmp_path):
    spec, platform = _compile(tmp_path)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # credentials come from Secrets on every step, never as literals
    for name in EXECUTORS:
        secrets = {s["secretName"]: s for s in k8s[name]["secretAsEnv"]}
        assert {e["envVar"] for e in secrets["effdet-s3"]["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert secrets["effdet-mlflow"]["optional"] is True
    # the cluster's settings ConfigMap on every step, each key optional
    for name in EXECUTORS:
        (cm,) = k8s[name]["configMapAsEnv"]
        assert cm["configMapName"] == "effdet-pipeline-env" and cm["optional"] is True
        assert {"MLFLOW_TRACKING_URI", "EFFDET_TRAIN_IMAGE", "EFFDET_MPI_WORKERS"} <= {
            e["envVar"] for e in cm["keyToEnv"]}
    text = yaml.safe_dump(spec)
    assert "SECRET_ACCESS_KEY:" not in text  # not set as a plain env value anywhere


def test_task_names_are_the_display_names(tmp_path):
    # kfp.local, {{$.pipeline_task_name}} (MPIJob, MLflow) and the run graph show the task name
    spec, _ = _compile(tmp_path)
    tasks = _steps(spec)
    for name in STEPS:
        assert tasks[name]["taskInfo"]["name"] == name
    assert spec["root"]["dag"]["tasks"]["close-run"]["taskInfo"]["name"] == "close-run"


@pytest.mark.parametrize("pipeline", ["detection", "classification"])
def test_close_run_is_the_exit_task_of_every_step(tmp_path, pipeline):
    """close-run runs after the exit handler's group, also when a step in it failed, with the
    group's final status (it ends the MLflow parent run)."""
    spec, _ = _compile(tmp_path, pipeline=pipeline)
    close = spec["root"]["dag"]["tasks"]["close-run"]
    assert close["dependentTasks"] == ["exit-handler-1"]
    assert close["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    params = close["inputs"]["parameters"]
    assert params["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert params["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert close.get("cachingOptions", {}).get("enableCache") in (None, False)
    assert STEPS <= set(_steps(spec))


def test_split_formats_sends_tftrt_to_its_own_step():
    from efficientdet.orchestration.pipeline_steps import StepError, split_formats

    assert split_formats("saved_model,onnx") == ("saved_model,onnx", False)
    assert split_formats("onnx, TF-TRT") == ("onnx", True)
    assert split_formats("tftrt") == ("saved_model", True)  # the SavedModel is still registered
    with pytest.raises(StepError, match="unknown 'tensorrt'"):
        split_formats("onnx,tensorrt")


def test_caching_and_retries(tmp_path):
    spec, _ = _compile(tmp_path)
    tasks = _steps(spec)
    assert tasks["convert-train"]["cachingOptions"] == {"enableCache": True}
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
               "learning_rate", "ema_decay", "eval_interval", "mlflow_experiment", "init_from",
               "workers",
               "gpus_per_worker", "train_image", "worker_cpu",
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
    assert params["eval_interval"]["parameterType"] == "NUMBER_INTEGER"
    assert "validation split" in params["eval_interval"]["description"]
    # the experiment reaches every step: whichever runs first makes the parent run in it
    tasks = _steps(spec)
    channel = {"componentInputParameter": "pipelinechannel--mlflow_experiment"}
    assert {name for name, t in tasks.items()
            if t["inputs"]["parameters"].get("mlflow_experiment") == channel} == {
            name for name in tasks if not name.startswith("condition-")}  # dsl.If groups
    close = spec["root"]["dag"]["tasks"]["close-run"]["inputs"]["parameters"]
    assert close["mlflow_experiment"] == {"componentInputParameter": "mlflow_experiment"}
    # and the training step declares them optional too, bound to the pipeline's parameters
    train_inputs = spec["components"]["comp-train"]["inputDefinitions"]["parameters"]
    bound = tasks["train"]["inputs"]["parameters"]
    for name in ("amp", "xla", "steps", "model_name", "workers", "gpus_per_worker",
                 "learning_rate", "ema_decay", "eval_interval"):
        assert train_inputs[name].get("isOptional") is True and "defaultValue" not in \
            train_inputs[name], name
        assert bound[name] == {"componentInputParameter": f"pipelinechannel--{name}"}


def test_local_options_leave_cluster_settings_out(tmp_path):
    from kfp import compiler

    from efficientdet.kfp_pipelines import ClusterOptions, build

    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(build("detection", ClusterOptions.local()), str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    executors = (docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
                 if len(docs) > 1 else {})
    assert all("secretAsEnv" not in e for e in executors.values())
    # kfp.local ignores resources and warns about each: none are set
    assert all("resources" not in e["container"]
               for name, e in docs[0]["deploymentSpec"]["executors"].items()
               if name != "exec-export-tftrt")
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
    (["compile", "-o", "x.yaml", "--step-resources", "{cpu"], "--step-resources: not JSON"),
    (["compile", "-o", "x.yaml", "--step-resources", '{"training": {"cpu": "1"}}'],
     "--step-resources: unknown step 'training'"),
    (["compile", "-o", "x.yaml", "--step-resources", '{"train": {"cpu": "lots"}}'],
     "--step-resources train: step resources cpu"),
    (["compile", "-o", "x.yaml", "--step-resources", '{"train": {"gpu": "1"}}'],
     "--step-resources train: expected an object with keys among"),
    (["compile", "-o", "x.yaml", "--train-step-gpus", "1"], "unrecognized arguments"),
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
                     "epochs=3", "learning_rate=0.02", "ema_decay=0", "mlflow_experiment=team",
                     "eval_interval=0"])
    assert got == {"workers": 4, "amp": False, "threshold": 0.25,
                   "model_name": "efficientdet-d1", "epochs": 3.0, "learning_rate": 0.02,
                   "ema_decay": 0.0, "mlflow_experiment": "team", "eval_interval": 0}
    for pair, message in (("learning_rate=0", "learning_rate"), ("ema_decay=1", "ema_decay"),
                          ("eval_interval=-5", "eval_interval")):
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
