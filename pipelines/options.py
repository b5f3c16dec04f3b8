"""Compile-time cluster settings and the per-step Kubernetes/KFP configuration they imply.

Runtime choices (model, data, epochs, workers, thresholds...) are pipeline parameters set in the
UI; what has to be fixed in the compiled YAML (Secret names, each step's CPU/memory, the
accelerator of the TF-TRT export, the tracking endpoint) lives here. The ConfigMap's keys and the Secrets' key names come from
`efficientdet.orchestration.cluster_settings`, which reads the same keys when a step runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from kfp import dsl
from kfp import kubernetes as k8s

from efficientdet.credentials import no_credentials
from efficientdet.kfp_pipelines.resources import DEFAULT_STEP_RESOURCES, StepResources
from efficientdet.orchestration.cluster_settings import (
    CONFIG_KEYS,
    CONFIG_MAP_NAME,
    GPU_RESOURCE,
    MLFLOW_SECRET_KEYS,
    MLFLOW_SECRET_NAME,
    S3_SECRET_KEYS,
    S3_SECRET_NAME,
)
from efficientdet.run_identity import IMAGE_ENV


@dataclass
class ClusterOptions:
    """None/empty fields are left out of the compiled pipeline (what `run-local` uses)."""

    config_map: str | None = CONFIG_MAP_NAME  # the cluster's non-secret settings (CONFIG_KEYS)
    s3_secret: str | None = S3_SECRET_NAME
    mlflow_secret: str | None = MLFLOW_SECRET_NAME
    mlflow_tracking_uri: str | None = None  # overrides the ConfigMap's value
    s3_endpoint_url: str | None = None
    # the GPU step (export-tftrt): accelerator, node selector, toleration, image; the train
    # step holds no GPU (it only creates and follows the MPIJob, whose workers get them)
    accelerator_type: str = GPU_RESOURCE
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_toleration: bool = True
    train_image: str | None = None  # image of export-tftrt; None: the component's TRAIN_IMAGE
    # CPU/memory of each step by task name (resources.py); a step missing here gets none
    step_resources: dict[str, StepResources] = field(
        default_factory=lambda: dict(DEFAULT_STEP_RESOURCES))
    step_timeout_s: int = 0
    retries: bool = True  # off for local runs: a failure there is a bug to see at once
    image_env: bool = True  # EFFDET_IMAGE = the step's image (MLflow tag effdet.image)

    def __post_init__(self):
        no_credentials(self.mlflow_tracking_uri or "", "MLflow tracking URI",
                       f"the Secret {self.mlflow_secret or MLFLOW_SECRET_NAME} "
                       "(MLFLOW_TRACKING_USERNAME/PASSWORD)")
        no_credentials(self.s3_endpoint_url or "", "S3 endpoint",
                       f"the Secret {self.s3_secret or S3_SECRET_NAME}")

    @classmethod
    def local(cls) -> ClusterOptions:
        # kfp.local ignores resources (and warns about each): leave them out
        # (and runs the steps in this environment, not in their images)
        return cls(config_map=None, s3_secret=None, mlflow_secret=None, retries=False,
                   step_resources={}, image_env=False)


def identity(mlflow_experiment) -> dict:
    """The KFP run id and task name, resolved when the task runs (names the MPIJob, tags runs),
    and the pipeline's MLFLOW_EXPERIMENT parameter: every step may be the first to make the
    parent MLflow run, so every step needs to know its experiment."""
    return {"kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            "kfp_task": dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
            "mlflow_experiment": mlflow_experiment}


def configure(task: dsl.PipelineTask, options: ClusterOptions, *, name: str, cache: bool,
              retries: int, resources: str | None = None, controller: bool = False,
              gpu: bool = False) -> dsl.PipelineTask:
    """NAME is the display name; RESOURCES the key in options.step_resources (default NAME);
    CONTROLLER gives the pod its own identity (it owns the MPIJob); GPU one accelerator, on
    options.train_image when set (GPU steps run on the training image)."""
    task.set_display_name(name).set_caching_options(cache)
    step = options.step_resources.get(resources or name)
    if step:
        task.set_cpu_request(step.cpu).set_memory_request(step.memory)
        if step.cpu_limit:
            task.set_cpu_limit(step.cpu_limit)
        if step.memory_limit:
            task.set_memory_limit(step.memory_limit)
    if retries and options.retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    if options.config_map:
        k8s.use_config_map_as_env(task, options.config_map, {k: k for k in CONFIG_KEYS},
                                  optional=True)
    if options.mlflow_tracking_uri:
        task.set_env_variable("MLFLOW_TRACKING_URI", options.mlflow_tracking_uri)
    if options.s3_endpoint_url:
        task.set_env_variable("AWS_ENDPOINT_URL", options.s3_endpoint_url)
        task.set_env_variable("MLFLOW_S3_ENDPOINT_URL", options.s3_endpoint_url)
    if options.s3_secret:
        k8s.use_secret_as_env(task, options.s3_secret, {k: k for k in S3_SECRET_KEYS})
    if options.mlflow_secret:
        k8s.use_secret_as_env(task, options.mlflow_secret, {k: k for k in MLFLOW_SECRET_KEYS},
                              optional=True)
    if options.step_timeout_s:
        k8s.set_timeout(task, options.step_timeout_s)
    if controller:
        # the pod that owns the MPIJob: its identity for ownerReferences (downward API)
        k8s.use_field_path_as_env(task, "POD_NAME", "metadata.name")
        k8s.use_field_path_as_env(task, "POD_UID", "metadata.uid")
        k8s.use_field_path_as_env(task, "POD_NAMESPACE", "metadata.namespace")
    if gpu:
        task.set_accelerator_type(options.accelerator_type)
        task.set_accelerator_limit(1)
        if options.gpu_toleration:
            k8s.add_toleration(task, key=options.accelerator_type, operator="Exists",
                               effect="NoSchedule")
        for key, value in options.gpu_node_selector.items():
            k8s.add_node_selector(task, key, value)
        if options.train_image:
            task.set_container_image(options.train_image)
    if options.image_env:
        task.set_env_variable(IMAGE_ENV, task.container_spec.image)
    return task
