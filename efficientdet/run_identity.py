"""What an MLflow run is about, so runs compare from the experiment table: its name and tags.

`run_name` is the one place a run's name is made (`train efficientdet-d0 coco-train
[kfp 1a2b3c4d]`, `efficientdet-detection [kfp 1a2b3c4d]`); `run_tags` the one place its tags
are made: what ran (``effdet.task``, ``effdet.variant``, ``effdet.dataset`` and
``effdet.dataset_digest``) and with what (``mlflow.source.git.commit``, ``effdet.version``,
``effdet.versions.<package>``, ``effdet.image``). A tag whose value is unknown is left out;
nothing here reads a secret or fails the work.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from efficientdet.credentials import carries_credentials

log = logging.getLogger(__name__)

# distributions whose versions a run records (first installed name of each wins)
VERSIONED_PACKAGES = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"),
    "keras": ("keras",),
    "horovod": ("horovod",),
    "mlflow": ("mlflow", "mlflow-skinny"),
}
# set by the image build (images/Dockerfile.*) where the checkout's .git is not copied
COMMIT_ENV = "EFFDET_GIT_COMMIT"
# the image a step or rank runs on (the pipeline compiles it into each step; the MPIJob spec
# sets it for its ranks)
IMAGE_ENV = "EFFDET_IMAGE"
SHORT_ID = 8
# annotation file stems that say nothing about the data (its folder names it instead)
GENERIC_STEMS = ("annotations", "instances", "labels", "train", "val", "test")


@dataclass(frozen=True)
class RunSubject:
    """What a run works on; every field optional (a conversion has no variant)."""

    task: str | None = None
    variant: str | None = None
    dataset: str | None = None  # a converted dataset's URI (directory, glob or list)


def run_name(step: str, subject: RunSubject | None = None, *,
             kfp_run_id: str | None = None) -> str:
    """STEP, the variant, the dataset's name and the KFP run's short id, e.g.
    ``train efficientdet-d0 coco-train [kfp 1a2b3c4d]``."""
    subject = subject or RunSubject()
    parts = [step, subject.variant, dataset_name(subject.dataset) if subject.dataset else None]
    name = " ".join(p for p in parts if p)
    if kfp_run_id:
        name += f" [kfp {short_id(kfp_run_id)}]"
    return name


def short_id(run_id: str) -> str:
    """KFP run ids are UUIDs (the first 8 hex digits tell runs apart); run-local's
    ``local-<hex>`` ids keep their prefix."""
    run_id = run_id.strip()
    if run_id.startswith("local-"):
        return run_id
    return run_id.replace("-", "")[:SHORT_ID] if len(run_id) > SHORT_ID else run_id


def dataset_name(uri: str) -> str:
    """A readable name for a converted dataset: what its conversion read (the annotations
    file's stem, or its folder when the stem is generic; the class-folder root), else the
    dataset directory's own name."""
    report = _report(uri)
    inputs = (report or {}).get("inputs") or {}
    source = inputs.get("annotations") or inputs.get("root")
    if isinstance(source, str) and source.strip("/ "):
        folders = source.strip().rstrip("/").split("/")
        name = folders[-1]
        if inputs.get("annotations"):
            name = name.rsplit(".", 1)[0]
            if name.lower() in GENERIC_STEMS and len(folders) > 1:
                name = folders[-2]
        if name:
            return name
    return _root(uri).rstrip("/").rsplit("/", 1)[-1] or str(uri)


def dataset_digest(uri: str) -> str | None:
    """sha256 (first 16 hex digits) of the dataset's ``report.json`` (less ``output``: where
    it was written is no part of what it holds) and its shard names: another conversion
    changes it, a copy does not, and no shard is read. None when the dataset cannot be
    listed."""
    from efficientdet.data.dataset import ConvertedDataset

    try:
        with ConvertedDataset.open(uri) as dataset:
            shards = [s.rsplit("/", 1)[-1] for s in dataset.shards]
            report = {k: v for k, v in (dataset.report or {}).items() if k != "output"}
    except Exception as exc:  # noqa: BLE001 - a tag must never stop the work
        log.debug("no digest for %s: %s", uri, exc)
        return None
    text = json.dumps({"report": report, "shards": shards}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _root(uri: str) -> str:
    from efficientdet.data.dataset import dataset_root

    return dataset_root(str(uri).split(",")[0].strip())


def _report(uri: str) -> dict | None:
    from efficientdet.data.dataset import ConvertedDataset

    try:
        with ConvertedDataset.open(uri) as dataset:
            return dataset.report
    except Exception:  # noqa: BLE001 - a name must never stop the work
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout the package runs from, else the image build's
    ``EFFDET_GIT_COMMIT``, else None."""
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                 text=True, timeout=5, check=True).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return os.environ.get(COMMIT_ENV) or None


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Installed versions of this package and of VERSIONED_PACKAGES (read from the
    distributions' metadata: nothing is imported)."""
    from efficientdet import __version__

    out = {"effdet.version": __version__}
    for name, dists in VERSIONED_PACKAGES.items():
        for dist in dists:
            try:
                out[f"effdet.versions.{name}"] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def subject_tags(subject: RunSubject) -> dict[str, str]:
    """What ran on what: task, variant, dataset URI and digest (known values only)."""
    tags = {"effdet.task": subject.task, "effdet.variant": subject.variant}
    if subject.dataset and not carries_credentials(str(subject.dataset)):
        tags["effdet.dataset"] = str(subject.dataset)
        tags["effdet.dataset_digest"] = dataset_digest(subject.dataset)
    return {k: str(v) for k, v in tags.items() if v}


def environment_tags(environ=None) -> dict[str, str]:
    """What it ran with: git commit, package versions, image (known values only)."""
    environ = os.environ if environ is None else environ
    tags = {"mlflow.source.git.commit": git_commit(), **package_versions(),
            "effdet.image": environ.get(IMAGE_ENV)}
    return {k: str(v) for k, v in tags.items() if v}


def run_tags(subject: RunSubject | None = None, environ=None) -> dict[str, str]:
    """The tags of a run about SUBJECT (see the module doc); unknown values are left out."""
    return {**subject_tags(subject or RunSubject()), **environment_tags(environ)}
