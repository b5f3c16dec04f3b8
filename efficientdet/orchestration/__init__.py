"""Kubeflow pipeline support: what the components call.

- ``mpijob``: the kubeflow.org/v2beta1 MPIJob (manifest, create/adopt, watch, logs, cleanup)
- ``launcher``: where training ranks run (MPIJob in a cluster, ``horovodrun --gloo`` locally)
- ``runs``: the MLflow layout of a pipeline run (parent run per KFP run, nested step runs)
- ``steps``: each step as a plain function over paths/URIs (convert, train, evaluate, export,
  register), returning the step's Markdown summary
"""
