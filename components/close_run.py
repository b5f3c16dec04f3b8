"""The pipeline's exit task: ends its MLflow parent run by how the pipeline ended."""

from typing import Optional

from kfp import dsl

from efficientdet.kfp_components.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def close_run(status: dsl.PipelineTaskFinalStatus, kfp_run_id: str,
              mlflow_experiment: Optional[str] = None) -> str:
    """Runs after every other step, also when one failed (dsl.ExitHandler): the parent run
    ends FINISHED, or FAILED naming the failing step (tag effdet.failed_step). Returns the
    MLflow status set ("" when nothing is tracked)."""
    from efficientdet.orchestration import runs

    return runs.close_parent_run(kfp_run_id, status.state, error=status.error_message or "",
                                 experiment=mlflow_experiment) or ""
