"""The images the components run on, fixed when the pipeline is compiled: the CPU image for
every step but the GPU one (export-tftrt), which runs on the training image (the MPIJob's
training image is a run parameter, defaulting to the cluster's EFFDET_TRAIN_IMAGE).

EFFDET_REGISTRY and EFFDET_IMAGE_TAG match scripts/build-images.sh (never `latest`)."""

from __future__ import annotations

import os

from efficientdet import __version__

REGISTRY = os.environ.get("EFFDET_REGISTRY", "ghcr.io/efficientdet")
TAG = os.environ.get("EFFDET_IMAGE_TAG", __version__)
COMPONENT_IMAGE = f"{REGISTRY}/effdet-cpu:{TAG}"
TRAIN_IMAGE = f"{REGISTRY}/effdet-train:{TAG}"
