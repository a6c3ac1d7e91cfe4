"""Progress writes of one running job, thinned to at most one per interval.

Every write is a Redis script call, a pub/sub message and an SSE event at each subscribed client. When a
step takes a few milliseconds (a GPU, or one-view jobs batched on CPU) a write per step floods all three
for a progress bar nobody reads that fast; on the 2-core machine that traffic competed with the UNet for
the same cores. The first step is written at once (the job is visibly running) and the last one always
(a finished job shows step == total); cancel checks are not thinned (a cancel still stops the job at
its next step).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class _Throttle:
    """Calls `write(*args)` at most once per `interval_s`, except for the calls `forced(*args)` picks."""

    def __init__(
        self, write: Callable[..., None], interval_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self._write = write
        self._interval_s = interval_s
        self._clock = clock
        self._last_write: float | None = None

    def forced(self, *args: object) -> bool:
        return False

    def __call__(self, *args: object) -> None:
        now = self._clock()
        forced = self.forced(*args)  # always asked: a subclass may track state in it
        due = self._last_write is None or now - self._last_write >= self._interval_s
        if due or forced:
            self._write(*args)
            self._last_write = now


class ProgressThrottle(_Throttle):
    """Denoising steps: the first and the last (step == total) always."""

    def forced(self, step: int, total: int) -> bool:  # type: ignore[override]
        return step >= total


class StageThrottle(_Throttle):
    """Stage writes of a texture job: a new stage and a finished one (fraction 1) at once, moves within
    one (the unwrap's fraction) at most once per interval."""

    _stage: str | None = None

    def forced(self, name: str, fraction: float) -> bool:  # type: ignore[override]
        new = name != self._stage
        self._stage = name
        return new or fraction >= 1.0
