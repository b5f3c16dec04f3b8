"""The hook interface the Trainer calls; a hook overrides only the events it needs."""

from __future__ import annotations


class Hook:
    """Events of one run, in order (the Trainer documents the calling order):

    - ``on_setup``: before the model is built (install signal handlers);
    - ``on_restore``: the state is built, ranks have not shared it yet (resume a checkpoint);
    - ``on_train_begin``: every rank holds the same state, before the first step;
    - ``on_step_end(step, logs)``: after each step; LOGS are the rank-averaged losses plus
      ``learning_rate`` and ``images_per_second`` every ``train.log_every`` steps, else None;
    - ``on_checkpoint(step, path)``: a checkpoint was saved (an evaluation hook's cue);
    - ``on_train_end``: all steps done;
    - ``on_exit(error)``: always last, with the exception that ended the run or None.
    """

    def on_setup(self, trainer) -> None:
        pass

    def on_restore(self, trainer) -> None:
        pass

    def on_train_begin(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, step: int, logs: dict | None) -> None:
        pass

    def on_checkpoint(self, trainer, step: int, path: str) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        pass

    def on_exit(self, trainer, error: BaseException | None) -> None:
        pass
