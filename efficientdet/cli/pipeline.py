"""`effdet pipeline`: compile, submit or run the Kubeflow pipeline; MPIJob tools."""

from __future__ import annotations

import sys
from pathlib import Path

from efficientdet import validation as v
from efficientdet.cli import UsageError

PIPELINES = ("detection", "classification")


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="compile, submit or run the Kubeflow pipeline; MPIJob tools",
                       description="Compile, submit or run the Kubeflow pipeline; MPIJob tools.")
    verbs = p.add_subparsers(dest="pipeline_command", metavar="VERB", required=True)

    def common(q, cluster: bool = True):
        q.add_argument("--pipeline", choices=PIPELINES, default="detection",
                       help="which pipeline (default detection)")
        if cluster:
            q.add_argument("--config-map", default="effdet-pipeline-env",
                           help="ConfigMap with the cluster's settings, as env ('' = none)")
            q.add_argument("--s3-secret", default="effdet-s3",
                           help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY ('' = none)")
            q.add_argument("--mlflow-secret", default="effdet-mlflow",
                           help="Secret with MLflow credentials (optional keys; '' = none)")
            q.add_argument("--mlflow-uri", default="",
                           help="MLFLOW_TRACKING_URI for the steps (default: the ConfigMap's)")
            q.add_argument("--s3-endpoint", default="",
                           help="S3 endpoint for the steps (default: the ConfigMap's, else AWS)")
            q.add_argument("--train-step-gpus", type=v.arg(v.NonNegativeInt), default=1,
                           help="GPUs of the training step's own pod (0 when only MPIJobs train)")
            q.add_argument("--accelerator", default="nvidia.com/gpu", help="accelerator type")
            q.add_argument("--gpu-node-selector", default="",
                           help="k=v[,k=v] node selector of the training step")

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
                         description="Build the MPIJob a training step creates. With --dry-run "
                                     "print it as YAML; otherwise create it with the current "
                                     "kubeconfig and follow it. Training args follow `--`.")
    m.add_argument("--dry-run", action="store_true", help="print the MPIJob as YAML, create nothing")
    m.add_argument("--run-id", default="manual", help="KFP run id (names the job)")
    m.add_argument("--task", default="train", help="KFP task name (names the job)")
    m.add_argument("--namespace", default="kubeflow")
    m.add_argument("--image", required=True, help="training image")
    m.add_argument("--workers", type=v.arg(v.PositiveInt), default=1)
    m.add_argument("--gpus-per-worker", type=v.arg(v.NonNegativeInt), default=0)
    m.add_argument("--cpu", default="4")
    m.add_argument("--memory", default="16Gi")
    m.add_argument("--shm-size", default="8Gi")
    m.add_argument("--node-selector", default="", help="k=v[,k=v]")
    m.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                   help="e.g. nvidia.com/gpu:NoSchedule (repeatable)")
    m.add_argument("--env", action="append", default=[], metavar="K=V", help="plain env (repeatable)")
    m.add_argument("--secret-env", action="append", default=[], metavar="ENV=SECRET:KEY",
                   help="env from a Secret key (repeatable)")
    m.add_argument("--service-account")
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
    from efficientdet.pipeline.steps import StepError, parse_selector

    try:
        selector = parse_selector(args.gpu_node_selector, "--gpu-node-selector")
    except StepError as exc:
        raise UsageError(str(exc)) from None
    try:
        return ClusterOptions(
            config_map=args.config_map or None, s3_secret=args.s3_secret or None,
            mlflow_secret=args.mlflow_secret or None, mlflow_tracking_uri=args.mlflow_uri or None,
            s3_endpoint_url=args.s3_endpoint or None, accelerator_type=args.accelerator,
            train_step_gpus=args.train_step_gpus, gpu_node_selector=selector)
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


def _is_kfp_failure(exc: Exception) -> bool:
    """Connection, HTTP and API errors of the KFP client (expected: wrong host, no access)."""
    import urllib3
    from kfp_server_api.exceptions import OpenApiException

    return isinstance(exc, (OSError, urllib3.exceptions.HTTPError, OpenApiException, ValueError))


def run_local(args) -> int:
    kfp_pipelines = _pipelines()
    from efficientdet.kfp_pipelines.params import missing_required
    from efficientdet.kfp_pipelines.run_local import run_local as _run

    pipeline_obj = kfp_pipelines.build(args.pipeline, kfp_pipelines.ClusterOptions.local())
    params = _params(pipeline_obj, args.param)
    missing = missing_required(pipeline_obj, params)
    if missing:
        raise UsageError(f"missing --param for: {', '.join(missing)}")
    result = _run(args.pipeline, params, pipeline_root=args.pipeline_root)
    print(f"pipeline run {result['run_id']}: {result['state']}; artifacts in "
          f"{result['pipeline_root']}; MLflow parent run {result['parent_run_id']}")
    if result["error"]:
        print(f"effdet pipeline run-local: {result['error']}", file=sys.stderr)
    for step, info in result["steps"].items():
        print(f"  {step:<12} MLflow run {info['run_id']} ({info['status']})")
    if args.summary_json:
        import json

        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["state"] == "SUCCEEDED" else 1


def _toleration(text: str) -> dict:
    key_value, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not key_value:
        raise UsageError(f"--toleration {text!r}: expected KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute")
    key, eq, value = key_value.partition("=")
    return ({"key": key, "operator": "Equal", "value": value, "effect": effect} if eq
            else {"key": key, "operator": "Exists", "effect": effect})


def build_mpijob_spec(args):
    from efficientdet.pipeline import mpijob
    from efficientdet.pipeline.steps import StepError, parse_selector

    env = {}
    for pair in args.env:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise UsageError(f"--env {pair!r}: expected K=V")
        env[k] = v
    secret_env = []
    for item in args.secret_env:
        name, sep, ref = item.partition("=")
        secret, colon, key = ref.partition(":")
        if not (sep and colon and name and secret and key):
            raise UsageError(f"--secret-env {item!r}: expected ENV=SECRET:KEY")
        secret_env.append(mpijob.SecretEnv(name, secret, key))
    for option, value in (("--run-id", args.run_id), ("--task", args.task)):
        if not value.strip():
            raise UsageError(f"{option}: must not be empty (it names the job)")
    if not args.train_args:
        raise UsageError("no training arguments: add them after `--`, e.g. -- --config synth-detection")
    try:
        selector = parse_selector(args.node_selector, "--node-selector")
    except StepError as exc:
        raise UsageError(str(exc)) from None
    return mpijob.MPIJobSpec(
        name=mpijob.job_name(args.run_id, args.task), run_key=mpijob.run_key(args.run_id, args.task),
        image=args.image, command=["effdet", "train", *args.train_args], namespace=args.namespace,
        workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpu=args.cpu,
        memory=args.memory, shm_size=args.shm_size,
        tolerations=[_toleration(t) for t in args.toleration], node_selector=selector, env=env,
        secret_env=secret_env, service_account=args.service_account,
        active_deadline_seconds=args.deadline or None, backoff_limit=args.backoff_limit,
        labels={"app.kubernetes.io/name": "efficientdet-train"})


def run_mpijob(args) -> int:
    import yaml

    from efficientdet.pipeline import mpijob

    try:
        spec = build_mpijob_spec(args)
        manifest = mpijob.build_manifest(spec)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.dry_run:
        print(yaml.safe_dump(manifest, sort_keys=False), end="")
        return 0
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.ApiClient()
    runner = mpijob.MPIJobRunner(client.CustomObjectsApi(api), client.CoreV1Api(api),
                                 spec.namespace, cleanup=args.cleanup)
    try:
        outcome = runner.run(manifest)
    except mpijob.MPIJobFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"MPIJob {outcome.name}: {outcome.state}")
    return 0
