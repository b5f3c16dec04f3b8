"""SIGTERM/SIGINT end the run after the current step, with a checkpoint, on every rank."""

from __future__ import annotations

import signal
import sys
import threading

from efficientdet.training.hooks.base import Hook


class TrainingInterrupted(RuntimeError):
    """A signal stopped the run; a checkpoint was written when possible."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name if signum else "a signal"
        super().__init__(f"stopped by {name} after step {step}"
                         + (f"; checkpoint {checkpoint}" if checkpoint else ""))

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or 15)


class StopOnSignal(Hook):
    """Catches SIGTERM/SIGINT (a pod being stopped, Ctrl-C) into ``trainer.stop_signal``; the
    ranks agree on it with the step's gradients, then rank 0 saves a checkpoint and every rank
    raises `TrainingInterrupted`. A second signal acts as usual (the handler is one-shot)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self._previous: dict = {}
        self._trainer = None

    def on_setup(self, trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python only delivers signals to the main thread
        self._trainer = trainer
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self._trainer.stop_signal = signum
        print(f"received {signal.Signals(signum).name}: stopping after this step",
              file=sys.stderr, flush=True)
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_step_end(self, trainer, step, logs) -> None:
        if not (trainer.stop_agreed or trainer.stop_signal):
            return
        path = None
        if trainer.is_chief:
            path = trainer.save_checkpoint(step)
            print(f"checkpoint {path} at step {step}, state sha256 {trainer.state_digest()}",
                  flush=True)
        raise TrainingInterrupted(trainer.stop_signal or signal.SIGTERM, step, path)

    def on_exit(self, trainer, error) -> None:
        self._restore()
