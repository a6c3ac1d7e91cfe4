"""Graph and engine builds off the step batcher's thread: the build lock that never blocks the batcher.

A compiled backend (ONNX Runtime, TensorRT) needs one graph or engine per shape it serves, and building
one takes seconds (an ONNX export) to minutes (a TensorRT build). Built on first use inside the batcher,
every job on the worker would stop for it. Instead the runner answers `ready_for(...)`: True when the
shape's graphs are loaded; otherwise it queues their build here and answers False, and the batcher skips
that group this round while every other group keeps stepping (the waiting jobs can still be canceled).

A build wanted soon can be started ahead (`start`): a full step of step caching starts its shape's shallow
graph, which the steps after it want. Builds run one at a time on one thread (two builds at once only compete for the same GPU or cores; the
engine cache's file lock also keeps other processes from building the same entry). A build that fails
is reported once, to the jobs that asked for it, and forgotten, so a later job tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class BackgroundBuilds:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="realiz3d-engine-build")
        self._futures: dict[Hashable, Future] = {}
        self._lock = threading.Lock()

    def ready(self, key: Hashable, build: Callable[[], object]) -> bool:
        """Whether `key` is built: starts `build()` in the background the first time it is asked.

        Raises the build's exception (once) when it failed."""
        with self._lock:
            future = self._futures.get(key)
            if future is None:
                log.info("building %s in the background", key)
                future = self._futures[key] = self._executor.submit(build)
            if not future.done():
                return False
            error = future.exception()
            if error is not None:
                del self._futures[key]  # the next job asking tries again
                raise error
            return True

    def start(self, key: Hashable, build: Callable[[], object]) -> None:
        """Start `build()` in the background unless `key` is built or being built (a build wanted soon:
        its outcome is reported by `ready` when that is asked)."""
        with self._lock:
            if key not in self._futures:
                log.info("building %s in the background, ahead of its first use", key)
                self._futures[key] = self._executor.submit(build)

    def building(self) -> int:
        """How many builds are queued or running."""
        with self._lock:
            return sum(not f.done() for f in self._futures.values())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
