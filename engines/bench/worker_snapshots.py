"""What the gateway knew when it estimated a job: the live workers' infos, read from the job store every
`every` seconds while a benchmark runs (`realiz3d bench eta` re-estimates each job from the snapshot
before its POST under another cost model, so two models are compared on the same jobs in one run)."""

from __future__ import annotations

import bisect
import json
import threading
import time
from typing import Any

from service.jobs.redis_store import RedisJobStore


class WorkerSnapshots:
    def __init__(self, broker: str, every: float = 0.02) -> None:
        self.store = RedisJobStore(broker)
        self.every = every
        self.times: list[float] = []  # time.perf_counter() of each snapshot
        self.infos: list[str] = []  # each snapshot as read, in JSON: `before` hands out fresh copies
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-snapshots", daemon=True)

    def __enter__(self) -> WorkerSnapshots:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            infos = json.dumps(self.store.live_workers())
            self.times.append(time.perf_counter())
            self.infos.append(infos)
            self._stop.wait(self.every)

    def before(self, t: float) -> list[dict[str, Any]] | None:
        """A fresh copy of the last snapshot taken at or before perf_counter time `t` (None: none yet)."""
        i = bisect.bisect_right(self.times, t)
        return json.loads(self.infos[i - 1]) if i else None
