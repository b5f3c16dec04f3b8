"""`effdet pipeline`: compile, submit or run the Kubeflow pipeline; MPIJob tools."""

from __future__ import annotations

import sys
from pathlib import Path

from efficientdet import key_value
from efficientdet import validation as v
from efficientdet.cli import UsageError
from efficientdet.model_tasks import TASKS as PIPELINES
from efficientdet.orchestration.cluster_settings import (
    CONFIG_MAP_NAME,
    GPU_RESOURCE,
    MLFLOW_SECRET_NAME,
    S3_SECRET_NAME,
    SETTING_KEYS,
)

# What `mpijob --dry-run` shows when the environment does not say: the recipe the detection
# pipeline trains by default (the step passes the config document it resolved from it), and an
# image name that says it is missing (no job is created from a dry run).
DRY_RUN_TRAIN_ARGS = ("--config", "efficientdet-d0-coco")
DRY_RUN_IMAGE = "effdet-train:unset-EFFDET_TRAIN_IMAGE"


def add_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="compile, submit or run the Kubeflow pipeline; MPIJob tools",
                       description="Compile, submit or run the Kubeflow pipeline; MPIJob tools.")
    verbs = p.add_subparsers(dest="pipeline_command", metavar="VERB", required=True)

    def common(q, cluster: bool = True):
        q.add_argument("--pipeline", choices=PIPELINES, default="detection",
                       help="which pipeline (default detection)")
        if cluster:
            q.add_argument("--config-map", default=CONFIG_MAP_NAME,
                           help="ConfigMap with the cluster's settings, as env ('' = none)")
            q.add_argument("--s3-secret", default=S3_SECRET_NAME,
                           help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY ('' = none)")
            q.add_argument("--mlflow-secret", default=MLFLOW_SECRET_NAME,
                           help="Secret with MLflow credentials (optional keys; '' = none)")
            q.add_argument("--mlflow-uri", default="",
                           help="MLFLOW_TRACKING_URI for the steps (default: the ConfigMap's)")
            q.add_argument("--s3-endpoint", default="",
                           help="S3 endpoint for the steps (default: the ConfigMap's, else AWS)")
            q.add_argument("--step-resources", default="", metavar="JSON",
                           help="CPU/memory per step over the defaults, e.g. "
                                '\'{"evaluate": {"cpu": "8", "memory": "32Gi"}}\' '
                                "(keys cpu, memory, cpu_limit, memory_limit)")
            q.add_argument("--accelerator", default=GPU_RESOURCE,
                           help="accelerator type of the GPU step (export-tftrt)")
            q.add_argument("--gpu-node-selector", default="",
                           help="k=v[,k=v] node selector of the GPU step (export-tftrt)")
            q.add_argument("--train-image", default="",
                           help="image of the GPU step (default: REGISTRY/effdet-train:TAG "
                                "from EFFDET_REGISTRY/EFFDET_IMAGE_TAG)")

    c = verbs.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    common(c)
    c.add_argument("-o", "--output", required=True, help="output YAML file")
    c.set_defaults(handler=run_compile)

    s = verbs.add_parser("submit", help="submit a run to a KFP endpoint (token from $KFP_TOKEN)")
    common(s)
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kfp.example.com")
    s.add_argument("--experiment", required=True, help="experiment name (created if missing)")
    s.add_argument("--package", help="compiled YAML (default: compile now)")
    s.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="pipeline parameter (repeatable)")
    s.add_argument("--run-name", help="run name (default: pipeline name + time)")
    s.add_argument("--pipeline-name", help="upload as a new version of this pipeline first")
    s.add_argument("--version-name", help="name of the uploaded version (default: run name)")
    s.add_argument("--namespace", help="Kubeflow profile namespace")
    s.add_argument("--wait", action="store_true", help="wait; exit code follows the final state")
    s.add_argument("--timeout", type=v.arg(v.PositiveInt), default=24 * 3600,
                   help="--wait limit in seconds")
    s.set_defaults(handler=run_submit)

    r = verbs.add_parser("run-local", help="run the whole pipeline here under kfp.local")
    common(r, cluster=False)
    r.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="pipeline parameter (repeatable)")
    r.add_argument("--pipeline-root", default="pipeline-runs", help="where artifacts go")
    r.add_argument("--summary-json", help="also write the run's summary (steps, metrics) here")
    r.set_defaults(handler=run_local)

    m = verbs.add_parser("mpijob", help="build (and with a cluster, run) the training MPIJob",
                         description="Build the MPIJob a training step creates, from the same "
                                     "cluster settings (the EFFDET_* keys of the settings "
                                     "ConfigMap, read from the environment) and the same "
                                     "builder; options override single settings. With "
                                     "--dry-run print it as YAML; otherwise create it with the "
                                     "current kubeconfig and follow it. Training args follow `--` "
                                     "(--dry-run without them: "
                                     f"{' '.join(DRY_RUN_TRAIN_ARGS)}; without a training image "
                                     f"anywhere it shows {DRY_RUN_IMAGE}).")
    m.add_argument("--dry-run", action="store_true", help="print the MPIJob as YAML, create nothing")
    m.add_argument("--run-id", default="manual", help="KFP run id (names the job)")
    m.add_argument("--kfp-task", "--task", dest="kfp_task", default="train",
                   help="KFP task name (names the job)")
    m.add_argument("--namespace", help="default: POD_NAMESPACE, else this pod's, else kubeflow")

    def setting(flag: str, name: str, **kw):
        m.add_argument(flag, dest=name, help=f"default: {SETTING_KEYS[name]}", **kw)

    setting("--image", "train_image")
    setting("--workers", "workers", type=v.arg(v.PositiveInt))
    setting("--gpus-per-worker", "gpus_per_worker", type=v.arg(v.NonNegativeInt))
    setting("--cpu", "worker_cpu", type=v.arg(v.Quantity, parse=str))
    setting("--memory", "worker_memory", type=v.arg(v.Quantity, parse=str))
    setting("--shm-size", "shm_size", type=v.arg(v.Quantity, parse=str))
    setting("--service-account", "service_account")
    setting("--s3-secret", "s3_secret")
    m.add_argument("--mlflow-secret", default="",
                   help="Secret with MLflow credentials (optional keys; default none)")
    m.add_argument("--node-selector", default="",
                   help="k=v[,k=v], added to EFFDET_MPI_NODE_SELECTOR")
    m.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                   help="e.g. nvidia.com/gpu:NoSchedule (repeatable; added to "
                        "EFFDET_MPI_TOLERATIONS)")
    m.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="plain env (repeatable), added to the tracking/storage env forwarded "
                        "from this environment")
    m.add_argument("--secret-env", action="append", default=[], metavar="ENV=SECRET:KEY",
                   help="env from a Secret key (repeatable)")
    m.add_argument("--deadline", type=v.arg(v.NonNegativeInt), default=0,
                   help="activeDeadlineSeconds (0 = none)")
    m.add_argument("--backoff-limit", type=v.arg(v.NonNegativeInt), default=0)
    m.add_argument("--cleanup", choices=("delete", "keep", "delete-on-success"),
                   default="delete-on-success")
    m.add_argument("train_args", nargs="*", help="effdet train arguments (after --)")
    m.set_defaults(handler=run_mpijob)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def _pipelines():
    """The Kubeflow pipeline definitions: the repository's pipelines/ folder, installed as
    `efficientdet.kfp_pipelines` (see setup.py)."""
    try:
        from efficientdet import kfp_pipelines
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("efficientdet.kfp_"):
            raise UsageError("the pipeline definitions (pipelines/, components/) are not "
                             "installed: run `pip install -e .` in the repository") from None
        if (exc.name or "").split(".")[0] == "kfp":
            raise UsageError("the Kubeflow Pipelines SDK is not installed: "
                             "pip install 'efficientdet[pipeline]'") from None
        raise
    return kfp_pipelines


def _options(args):
    from efficientdet.kfp_pipelines.options import ClusterOptions
    from efficientdet.kfp_pipelines.resources import with_overrides

    try:
        selector = key_value.parse_list(args.gpu_node_selector, "--gpu-node-selector")
        resources = with_overrides(args.step_resources, what="--step-resources")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        return ClusterOptions(
            config_map=args.config_map or None, s3_secret=args.s3_secret or None,
            mlflow_secret=args.mlflow_secret or None, mlflow_tracking_uri=args.mlflow_uri or None,
            s3_endpoint_url=args.s3_endpoint or None, accelerator_type=args.accelerator,
            gpu_node_selector=selector, train_image=args.train_image or None,
            step_resources=resources)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_compile(args) -> int:
    _pipelines()
    from efficientdet.kfp_pipelines.compile import compile_pipeline

    path = compile_pipeline(args.pipeline, args.output, _options(args))
    print(f"compiled the {args.pipeline} pipeline to {path}")
    return 0


def _params(pipeline_obj, pairs: list[str]) -> dict:
    from efficientdet.kfp_pipelines.params import coerce

    try:
        return coerce(pipeline_obj, pairs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_submit(args) -> int:
    import tempfile
    import time

    kfp_pipelines = _pipelines()
    from efficientdet.credentials import no_credentials
    from efficientdet.kfp_pipelines.compile import compile_pipeline
    from efficientdet.kfp_pipelines.params import missing_required
    from efficientdet.kfp_pipelines.submit import SUCCESS, submit, token_from_env

    try:
        no_credentials(args.host, "--host", "$KFP_TOKEN")
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    options = _options(args)
    pipeline_obj = kfp_pipelines.build(args.pipeline, options)
    params = _params(pipeline_obj, args.param)
    missing = missing_required(pipeline_obj, params)
    if missing:
        raise UsageError(f"missing --param for: {', '.join(missing)}")
    package = args.package
    if package and not Path(package).is_file():
        raise UsageError(f"--package {package}: no such file")
    if not package:
        package = str(compile_pipeline(args.pipeline,
                                       Path(tempfile.mkdtemp()) / f"{args.pipeline}.yaml", options))
    _check_gpu_steps(params)
    run_name = args.run_name or f"{pipeline_obj.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"submitting to {args.host} (token: {'from env' if token_from_env() else 'none'})")
    try:
        result = submit(package, host=args.host, experiment=args.experiment, params=params,
                        run_name=run_name, pipeline_name=args.pipeline_name,
                        version_name=args.version_name, namespace=args.namespace,
                        wait=args.wait, timeout_s=args.timeout)
    except Exception as exc:
        if not _is_kfp_failure(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--host {args.host}: the KFP API call failed "
                         f"({type(exc).__name__}: {first})") from None
    if result.version_id:
        print(f"pipeline {args.pipeline_name}: version {result.version_id}")
    print(f"run {result.run_id}: {result.url}")
    if not args.wait:
        return 0
    print(f"final state: {result.state}")
    return 0 if result.state and result.state.upper().endswith(SUCCESS) else 1


def _check_gpu_steps(params: dict) -> None:
    """`export_formats` with tf-trt adds a GPU step: refuse the run where no node has a GPU."""
    from efficientdet.orchestration.gpu_nodes import NoGPUNode, check_gpu_node
    from efficientdet.orchestration.pipeline_steps import split_formats

    formats = params.get("export_formats")
    if not formats or not split_formats(str(formats))[1]:
        return
    try:
        note = check_gpu_node(f"--param export_formats={formats} (the export-tftrt step)")
    except NoGPUNode as exc:
        raise UsageError(f"{exc}; leave tf-trt out of export_formats or add a GPU node") \
            from None
    if note:
        print(f"note: {note}; the export-tftrt step will wait for a GPU node", file=sys.stderr)


def _is_kfp_failure(exc: Exception) -> bool:
    """Connection, HTTP and API errors of the KFP client (expected: wrong host, no access)."""
    import urllib3
    from kfp_server_api.exceptions import OpenApiException

    return isinstance(exc, (OSError, urllib3.exceptions.HTTPError, OpenApiException, ValueError))


def run_local(args) -> int:
    kfp_pipelines = _pipelines()
    from efficientdet.kfp_pipelines.local_output import closing_lines
    from efficientdet.kfp_pipelines.params import missing_required
    from efficientdet.kfp_pipelines.run_local import run_local as _run

    pipeline_obj = kfp_pipelines.build(args.pipeline, kfp_pipelines.ClusterOptions.local())
    params = _params(pipeline_obj, args.param)
    missing = missing_required(pipeline_obj, params)
    if missing:
        raise UsageError(f"missing --param for: {', '.join(missing)}")
    result = _run(args.pipeline, params, pipeline_root=args.pipeline_root)
    if result["error"]:
        print(f"effdet pipeline run-local: {result['error']}", file=sys.stderr)
    print("\n".join(closing_lines(result)))
    if args.summary_json:
        import json

        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["state"] == "SUCCEEDED" else 1


def _toleration(text: str) -> dict:
    key_value_text, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") \
            or not key_value_text:
        raise UsageError(f"--toleration {text!r}: expected "
                         "KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute")
    if "=" not in key_value_text:
        return {"key": key_value_text, "operator": "Exists", "effect": effect}
    key, value = key_value.parse_pair(key_value_text, "--toleration", "KEY[=VALUE]:EFFECT")
    return {"key": key, "operator": "Equal", "value": value, "effect": effect}


def _secret_env(item: str):
    from efficientdet.orchestration.mpijob import SecretEnv

    form = "ENV=SECRET:KEY"
    name, ref = key_value.parse_pair(item, "--secret-env", form)
    secret, colon, key = ref.partition(":")
    if not (colon and secret and key):
        raise key_value.KeyValueError(f"--secret-env {item!r}: expected {form}")
    return SecretEnv(name, secret, key)


def mpijob_backend(args):
    """The training step's MPIJob backend for these options: the cluster's settings from the
    environment, each option that is given overriding one setting."""
    from efficientdet.orchestration.backends import MPIJobBackend
    from efficientdet.orchestration.cluster_settings import ClusterSettings

    for option, value in (("--run-id", args.run_id), ("--kfp-task", args.kfp_task)):
        if not value.strip():
            raise UsageError(f"{option}: must not be empty (it names the job)")
    settings = ClusterSettings.from_env().override(
        **{name: getattr(args, name) for name in (
            "train_image", "workers", "gpus_per_worker", "worker_cpu", "worker_memory",
            "shm_size", "service_account", "s3_secret")},
        node_selector=key_value.parse_list(args.node_selector, "--node-selector"),
        tolerations=[_toleration(t) for t in args.toleration])
    return MPIJobBackend(
        settings, run_id=args.run_id, kfp_task=args.kfp_task, mlflow_secret=args.mlflow_secret,
        extra_secret_env=[_secret_env(item) for item in args.secret_env],
        namespace=args.namespace, cleanup=args.cleanup,
        active_deadline_seconds=args.deadline or None, backoff_limit=args.backoff_limit)


def build_mpijob_spec(args):
    """The MPIJob spec the training step would build for these options (see mpijob_backend),
    with the env it forwards from this environment plus --env. A dry run fills in what is
    missing (DRY_RUN_TRAIN_ARGS, DRY_RUN_IMAGE) and says so on stderr; a real run needs both."""
    from efficientdet.orchestration.backends import forwarded_env
    from efficientdet.orchestration.cluster_settings import ClusterSettings

    train_args = list(args.train_args)
    if not train_args:
        if not args.dry_run:
            raise UsageError("no training arguments: add them after `--`, "
                             "e.g. -- --config synth-detection")
        train_args = list(DRY_RUN_TRAIN_ARGS)
        print(f"effdet pipeline mpijob: training args {' '.join(train_args)} (none given after "
              "`--`; the step passes --config <output>/train-config.yaml)", file=sys.stderr)
    if args.dry_run and not (args.train_image or ClusterSettings.from_env().train_image):
        args.train_image = DRY_RUN_IMAGE
        print(f"effdet pipeline mpijob: image {DRY_RUN_IMAGE} (no --image, no "
              f"{SETTING_KEYS['train_image']}; set one before running the job)", file=sys.stderr)
    user_env = key_value.parse_pairs(args.env, "--env", "K=V")
    for i, name in enumerate(user_env):
        try:
            v.check(name, v.EnvName, f"--env[{i}]")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return mpijob_backend(args).spec(train_args, {**forwarded_env(), **user_env})


def run_mpijob(args) -> int:
    import yaml

    from efficientdet.orchestration import mpijob

    try:
        spec = build_mpijob_spec(args)
        manifest = mpijob.build_manifest(spec)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.dry_run:
        print(yaml.safe_dump(manifest, sort_keys=False), end="")
        return 0
    try:
        outcome = mpijob.run_job(spec, cleanup=args.cleanup)
    except mpijob.MPIJobFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"MPIJob {outcome.name}: {outcome.state}")
    return 0
