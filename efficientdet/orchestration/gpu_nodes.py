"""Whether the cluster has a node with a GPU, asked before a run that needs one.

A TF-TRT export asks for one `nvidia.com/gpu`; on a cluster without a GPU node its pod waits
Pending for ever, and the pipeline's own service account may not list nodes (rbac.yaml grants
namespaced access only). `effdet pipeline submit` therefore asks with the submitter's
kubeconfig, before the run starts.
"""

from __future__ import annotations

from efficientdet.orchestration.cluster_settings import GPU_RESOURCE


class NoGPUNode(RuntimeError):
    """The run asks for a GPU step and no node of the cluster offers a GPU."""


def gpu_nodes(core_api) -> list[str]:
    """Names of the nodes whose allocatable resources hold at least one GPU."""
    names = []
    for node in core_api.list_node().items:
        allocatable = (node.status.allocatable or {}) if node.status else {}
        try:
            count = int(str(allocatable.get(GPU_RESOURCE, "0")))
        except ValueError:
            count = 0
        if count > 0:
            names.append(node.metadata.name)
    return names


def check_gpu_node(what: str, core_api=None) -> str | None:
    """Raise NoGPUNode naming WHAT when the cluster has no GPU node. Returns a note instead of
    deciding when the nodes cannot be listed (no kubeconfig, no permission): the run then goes
    ahead and its GPU step waits for a node."""
    if core_api is None:
        try:
            from efficientdet.orchestration.mpijob import kube_apis

            _, core_api = kube_apis()
        except Exception as exc:  # noqa: BLE001 - no kubeconfig / in-cluster credentials
            return f"could not check for a GPU node ({type(exc).__name__}: {exc})"
    try:
        found = gpu_nodes(core_api)
    except Exception as exc:  # noqa: BLE001 - ApiException 403 and connection errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"could not list nodes to check for a GPU ({type(exc).__name__}: {first})"
    if not found:
        raise NoGPUNode(f"{what} needs a node with {GPU_RESOURCE} and no node of the cluster "
                        "has one: its pod would wait Pending for ever")
    return None
