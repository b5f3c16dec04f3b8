"""Kubeflow components: thin `@dsl.component` shells over
`efficientdet.orchestration.pipeline_steps`.

They are lightweight Python components on the project's image (`images.COMPONENT_IMAGE`), so the
same functions run in a cluster and under `kfp.local` (whose process has the package installed).
"""
