"""Installs the repository's Kubeflow folders inside the package: pipelines/ as
`efficientdet.kfp_pipelines` and components/ as `efficientdet.kfp_components`, so no generic
top-level `pipelines`/`components` package lands in site-packages. The rest of the project's
metadata is in pyproject.toml (pyproject alone cannot list found packages next to mapped ones)."""

from setuptools import find_namespace_packages, setup

# installed subpackage -> the folder at the repository root that holds its modules
KFP_FOLDERS = {"efficientdet.kfp_pipelines": "pipelines",
               "efficientdet.kfp_components": "components"}

setup(packages=[*find_namespace_packages(include=["efficientdet", "efficientdet.*"],
                                         exclude=["*.__pycache__"]), *KFP_FOLDERS],
      package_dir=KFP_FOLDERS)
