"""The run's NVIDIA-style ``DLLL`` log (`training.dllogger`): parameters, logged steps, the end."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from efficientdet import storage
from efficientdet.training.dllogger import DLLogger
from efficientdet.training.hooks.base import Hook

log = logging.getLogger(__name__)
FILE_NAME = "dllogger.json"


class DLLLogging(Hook):
    """Writes FILE (and the same lines to stdout when STDOUT; the console has its own human
    lines, `hooks.progress`); with UPLOAD_URI the file is copied there when
    the run ends, also after an error. Rank 0 only."""

    def __init__(self, file: str, *, stdout: bool = False, upload_uri: str | None = None):
        self.file = file
        self.stdout = stdout
        self.upload_uri = upload_uri
        self.logger: DLLogger | None = None

    @classmethod
    def for_output(cls, output: str, file: str | None = None, *, stdout: bool = False):
        """FILE, else OUTPUT/dllogger.json; an s3:// OUTPUT gets a local file uploaded there."""
        if file is not None:
            return cls(file, stdout=stdout)
        if storage.is_remote(output):
            local = Path(tempfile.mkdtemp(prefix="effdet-dllogger-")) / FILE_NAME
            return cls(str(local), stdout=stdout, upload_uri=storage.join(output, FILE_NAME))
        return cls(str(Path(output) / FILE_NAME), stdout=stdout)

    def on_train_begin(self, trainer) -> None:
        self.logger = DLLogger(self.file, sys.stdout if self.stdout else None)
        trainer.log_files.append(self.file)
        self.logger.parameters(trainer.run_params)

    def on_step_end(self, trainer, step, logs) -> None:
        if logs is not None:
            self.logger.log(step, logs)

    def on_train_end(self, trainer) -> None:
        final = {k: v for k, v in trainer.summary["throughput"].items() if v is not None}
        self.logger.log([], {**trainer.metrics, **final, "final_step": trainer.step})
        self.logger.close()

    def on_exit(self, trainer, error) -> None:
        if self.logger is not None:
            self.logger.close()
        if self.upload_uri and Path(self.file).is_file():
            try:
                storage.upload_file(self.file, self.upload_uri)
            except Exception as exc:  # noqa: BLE001 - logging must not mask the run's error
                log.warning("could not upload %s: %s", self.upload_uri, exc)
