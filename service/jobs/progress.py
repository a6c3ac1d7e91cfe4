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


class ProgressThrottle:
    def __init__(
        self,
        write: Callable[[int, int], None],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._interval_s = interval_s
        self._clock = clock
        self._last_write: float | None = None

    def __call__(self, step: int, total: int) -> None:
        now = self._clock()
        due = self._last_write is None or now - self._last_write >= self._interval_s
        if due or step >= total:
            self._write(step, total)
            self._last_write = now
