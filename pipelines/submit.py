"""Submit a compiled pipeline to a KFP endpoint (optionally as a new pipeline version) and
follow the run; the final state decides the exit code (for CI)."""

from __future__ import annotations

import os
from dataclasses import dataclass

TOKEN_ENV = ("KFP_TOKEN", "KF_PIPELINES_TOKEN")
SUCCESS = "SUCCEEDED"


@dataclass
class Submitted:
    run_id: str
    url: str
    state: str | None = None
    pipeline_id: str | None = None
    version_id: str | None = None


def token_from_env(environ=None) -> str | None:
    environ = os.environ if environ is None else environ
    for name in TOKEN_ENV:
        if environ.get(name):
            return environ[name]
    return None


def client(host: str, namespace: str | None = None):
    import warnings

    import kfp

    with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": noise
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, existing_token=token_from_env(), namespace=namespace)


def submit(package: str, *, host: str, experiment: str, params: dict, run_name: str,
           pipeline_name: str | None = None, version_name: str | None = None,
           namespace: str | None = None, wait: bool = False, timeout_s: int = 24 * 3600,
           ) -> Submitted:
    """Runs PACKAGE in EXPERIMENT. With PIPELINE_NAME it is first uploaded as a new version of
    that pipeline (the pipeline is created on first use) and the run points at that version."""
    c = client(host, namespace)
    exp = _experiment(c, experiment, namespace)
    pipeline_id = version_id = None
    if pipeline_name:
        pipeline_id = c.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            created = c.upload_pipeline(package, pipeline_name=pipeline_name)
            pipeline_id = created.pipeline_id
            versions = c.list_pipeline_versions(pipeline_id).pipeline_versions or []
            version_id = versions[0].pipeline_version_id
        else:
            version = c.upload_pipeline_version(package, version_name or run_name,
                                                pipeline_id=pipeline_id)
            version_id = version.pipeline_version_id
        run = c.run_pipeline(experiment_id=exp, job_name=run_name, params=params,
                             pipeline_id=pipeline_id, version_id=version_id)
    else:
        run = c.run_pipeline(experiment_id=exp, job_name=run_name, params=params,
                             pipeline_package_path=package)
    result = Submitted(run.run_id, f"{host.rstrip('/')}/#/runs/details/{run.run_id}",
                       pipeline_id=pipeline_id, version_id=version_id)
    if wait:
        final = c.wait_for_run_completion(run.run_id, timeout=timeout_s)
        result.state = str(final.state)
    return result


def _experiment(c, name: str, namespace: str | None) -> str:
    try:
        return c.get_experiment(experiment_name=name, namespace=namespace).experiment_id
    except Exception:  # noqa: BLE001 - the client raises ValueError/ApiException when missing
        return c.create_experiment(name, namespace=namespace).experiment_id
