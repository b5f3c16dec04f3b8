"""Images per second, per rank and in total, excluding warm-up steps (tracing, XLA compile)."""

from __future__ import annotations

import time


class ThroughputMeter:
    def __init__(self, batch_size: int, world_size: int = 1, warmup_steps: int = 2):
        self.batch_size = batch_size
        self.world_size = world_size
        self.warmup_steps = warmup_steps
        self._seen = 0
        self._t0: float | None = time.perf_counter() if warmup_steps <= 0 else None
        self._timed_steps = 0
        self._t_last: float | None = None
        self._pending = 0.0  # excluded seconds since the last step
        self._excluded = 0.0  # excluded seconds between the first and the last timed step
        # a short window for progress lines
        self._window_t = time.perf_counter()
        self._window_steps = 0

    def step(self, warmup: bool = False) -> None:
        """Call after each finished step (after its results are materialized). WARMUP: the
        step traced its function again; its time and images stay out of the total rate."""
        now = time.perf_counter()
        self._seen += 1
        self._window_steps += 1
        if self._seen == self.warmup_steps:
            self._t0 = now
        elif self._seen > self.warmup_steps:
            if warmup:
                self._excluded += now - (self._t_last if self._t_last is not None else self._t0)
            else:
                self._timed_steps += 1
                self._excluded += self._pending
            self._t_last = now
        self._pending = 0.0

    def exclude(self, seconds: float) -> None:
        """Leave SECONDS spent outside training steps (an evaluation after a step) out of both
        rates: the total counts them only when a timed step follows (not after the last)."""
        self._pending += seconds
        self._window_t += seconds

    def window(self) -> float:
        """Images/s per rank since the previous call (for progress lines)."""
        now = time.perf_counter()
        dt = now - self._window_t
        rate = self._window_steps * self.batch_size / dt if dt > 0 else 0.0
        self._window_t, self._window_steps = now, 0
        return rate

    @property
    def timed_steps(self) -> int:
        return self._timed_steps

    def summary(self) -> dict:
        """{"images_per_second_per_rank", "images_per_second", "timed_steps", ...}."""
        if not self._timed_steps or self._t0 is None or self._t_last is None:
            return {"images_per_second_per_rank": None, "images_per_second": None,
                    "timed_steps": 0, "warmup_steps": self.warmup_steps}
        elapsed = self._t_last - self._t0 - self._excluded
        per_rank = self._timed_steps * self.batch_size / elapsed if elapsed > 0 else None
        return {
            "images_per_second_per_rank": per_rank,
            "images_per_second": per_rank * self.world_size if per_rank else None,
            "timed_steps": self._timed_steps,
            "timed_seconds": elapsed,
            "warmup_steps": self.warmup_steps,
        }
