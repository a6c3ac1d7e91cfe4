"""Step-level batching of UNet calls across concurrent jobs (vLLM-style per-step scheduling).

Jobs run their own threads (one per Celery slot or request) and hand their `DenoiseJob` to one
`StepBatcher`, whose thread owns the runner. Every iteration it:

1. admits waiting jobs (FIFO, up to `max_jobs` active), drops canceled ones;
2. groups the active jobs' next UNet calls by what can share one call: same views and image shape, and,
   for fused weight sets, the same domain combo (a step-split job moves from the synthetic group to the
   real group mid-run); unfused adapters take any domain mix in one call;
3. runs each group as one batched call, scatters the predictions back and advances every job one step.

The batcher's thread only computes. Each job's progress callback and cancel check run on the job's
own thread (woken after each of its steps), so a slow progress sink delays only its own job, and a
cancel is seen at the next iteration. Every active job advances exactly one step per iteration, so none
starves; a job that joins mid-way
starts at its own step 0 (timesteps are per sample), and one that finishes or is canceled leaves without
stalling the rest. `max_jobs = 1` turns cross-job batching off (jobs then run one after another).

Budget: `max_cells` bounds one UNet call in UNet-input cells (rows x H x W; the pipeline sets it from
`max_images` native-resolution images). A group above it is split into several calls, by jobs and, for a
single job above it, by whole objects (every view of an object stays in one call: multi-view attention).

Supervision: if the batcher's thread dies (a bug, not a failed UNet call, which fails only the jobs in it),
every active and waiting job fails with `BatcherDied`, later submissions are refused with it, and
`alive()` turns False (the worker's /readyz answers 503 and its heartbeat stops advertising it). Every wait
has a timeout, so a job thread never hangs on a dead batcher. A job that completed its last step is done:
a cancel or deadline seen after that never turns it into a canceled one.

Timings reach `on_unet_call` through the executor (engines/runtime/engine.py): CUDA events read once
their call has finished, never a synchronize in the loop.

The loop itself (plan, execute, advance) is `EngineCore.step()`; this class is its threaded driver:
admission, the job threads' hand-over, and supervision.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from engines.errors import BatcherDied, JobCanceled
from engines.requests import CancelCheck, ProgressCallback
from engines.runtime.base import UNetRunner
from engines.runtime.cpu_setup import compute_thread
from engines.runtime.engine import (  # noqa: F401 - batch_inputs, group_key: re-exported
    BUILD_POLL_S,
    EngineCore,
    Slot,
    UNetCallObserver,
    batch_inputs,
    group_key,
)
from engines.runtime.step_costs import StepCosts
from engines.sampling.denoise import DenoiseJob

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Entry(Slot):
    finished: threading.Event = field(default_factory=threading.Event)
    stepped: threading.Event = field(default_factory=threading.Event)
    #: set by the job's own thread (canceled, or its progress callback failed): the batcher drops the job
    stop: BaseException | None = None

    def stepped_once(self) -> None:
        self.stepped.set()


class StepBatcher:
    """Owns the runner; advances all active jobs together, one batched UNet call per group per step."""

    def __init__(
        self,
        runner: UNetRunner,
        max_jobs: int = 8,
        max_wait_s: float = 0.005,
        on_unet_call: UNetCallObserver | None = None,
        threads: int | None = None,
        max_cells: int | None = None,
        costs: StepCosts | None = None,
    ) -> None:
        """`threads`: intra-op threads of the batcher's thread, which runs every UNet call (None: torch's
        default for a new thread, i.e. the last count set anywhere in the process). `max_cells`: the most
        UNet-input cells (rows x H x W) one call may hold (None: no bound but the runner's own). `costs`:
        where the loop's measured step costs go (engines/runtime/step_costs.py)."""
        if max_jobs < 1:
            raise ValueError("max_jobs must be >= 1")
        if max_cells is not None and max_cells < 1:
            raise ValueError("max_cells must be >= 1")
        self.core = EngineCore(runner, on_unet_call, max_cells, costs=costs)
        self.max_jobs = max_jobs
        self.max_wait_s = max_wait_s
        self.threads = threads
        # How often a job's thread checks for cancel while the batcher is busy elsewhere (it also checks
        # after every step of its own job).
        self.poll_s = 0.25
        self._waiting: deque[_Entry] = deque()
        self._active: list[_Entry] = []
        self._cond = threading.Condition()
        self._closed = False
        #: why the batcher's thread ended, when it died (None while it runs, or after a clean close)
        self.died: BatcherDied | None = None
        #: longest a job thread waits for the batcher to let go of a job it stopped (then it gives up)
        self.stop_timeout_s = 600.0
        self._thread = threading.Thread(target=self._loop, name="realiz3d-step-batcher", daemon=True)
        self._thread.start()

    @property
    def runner(self) -> UNetRunner:
        return self.core.runner

    @property
    def max_cells(self) -> int | None:
        return self.core.max_cells

    @max_cells.setter
    def max_cells(self, value: int | None) -> None:
        self.core.max_cells = value

    # ---- called from job threads -------------------------------------------------------------------
    def run(
        self,
        job: DenoiseJob,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> torch.Tensor:
        """Denoise `job` alongside whatever else is running; blocks until done, canceled or failed.

        `progress` and `should_cancel` run here, on the caller's thread, once per step the job makes
        (every step is reported, in order): the batcher's thread only computes, so a slow progress sink
        (a Redis write) never holds up the other jobs' UNet calls.
        """
        entry = _Entry(job)
        with self._cond:
            if self.died is not None:
                raise self.died
            if self._closed:
                raise RuntimeError("the step batcher is closed")
            self._waiting.append(entry)
            self._cond.notify_all()
        reported = 0
        while True:
            done = entry.finished.is_set()
            if not done:
                entry.stepped.wait(self.poll_s)
                entry.stepped.clear()
                if not entry.finished.is_set() and not self._thread.is_alive():
                    self._fail_all(self._death("the step batcher's thread is gone"))
            step = job.step_index
            try:
                if progress is not None:
                    for s in range(reported + 1, step + 1):
                        progress(s, job.num_steps)
                reported = step
                # A job past its last step is done: a cancel or deadline now comes too late to stop it.
                if not done and not job.done and should_cancel is not None and should_cancel():
                    raise JobCanceled(f"canceled at step {step}/{job.num_steps}")
            except BaseException as e:  # noqa: BLE001 - this job stops; the others go on
                entry.stop = e
                with self._cond:
                    self._cond.notify_all()
                if not entry.finished.wait(self.stop_timeout_s):
                    raise self._death(
                        f"the step batcher did not release a stopped job in {self.stop_timeout_s:g} s"
                    ) from e
                if entry.error is None and job.done:
                    if isinstance(e, JobCanceled):
                        return job.latents  # it finished its last step meanwhile: the result stands
                    raise
                raise (entry.error or e) from None  # the job may have failed on its own meanwhile
            if done:
                break
        if entry.error is not None:
            raise entry.error
        return job.latents

    def alive(self) -> bool:
        """False once the batcher's thread has died (or was closed): it can run no job."""
        return self.died is None and not self._closed and self._thread.is_alive()

    def _death(self, why: str) -> BatcherDied:
        with self._cond:
            if self.died is None:
                self.died = BatcherDied(why)
            return self.died

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            entries = [*self._active, *self._waiting]
            self._active.clear()
            self._waiting.clear()
        for entry in entries:
            self._finish(entry, error)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # ---- the batcher thread ------------------------------------------------------------------------
    def _admit(self) -> bool:
        """Move waiting jobs into the active set; block while there is nothing to do."""
        with self._cond:
            while not self._closed and not self._waiting and not self._active:
                self._cond.wait(1.0)  # a timeout: close() or a lost notify never strands the thread
            if self._closed:
                for entry in [*self._active, *self._waiting]:
                    self._finish(entry, RuntimeError("the step batcher was closed"))
                return False
            if not self._active and self.max_jobs > 1 and self.max_wait_s > 0:
                # Idle -> busy: give concurrent submissions a moment to arrive so they start together.
                deadline = time.monotonic() + self.max_wait_s
                while len(self._waiting) < self.max_jobs and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            while self._waiting and len(self._active) < self.max_jobs:
                entry = self._waiting.popleft()
                if entry.stop is not None:  # canceled while it waited
                    self._finish(entry, entry.stop)
                    continue
                try:
                    self.core.admit(entry.job)
                except BaseException as e:  # noqa: BLE001 - reported to that job's caller
                    self._finish(entry, e)
                    continue
                self._active.append(entry)
            return True

    def _finish(self, entry: _Entry, error: BaseException | None = None) -> None:
        entry.error = error
        entry.finished.set()
        entry.stepped.set()  # wake the job's thread now, not at its next poll

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # noqa: BLE001 - the batcher's own bug: fail every job, say why
            log.exception("the step batcher's thread died")
            self._fail_all(self._death(f"the step batcher's thread died: {type(e).__name__}: {e}"))

    def _serve(self) -> None:
        if self.threads is not None:
            compute_thread(self.threads)
        while self._admit():
            for entry in [e for e in self._active if e.stop is not None]:
                self._active.remove(entry)
                self._finish(entry, entry.stop)
            plan = self.core.step(self._active)
            for entry in [e for e in self._active if e.job.done or e.error is not None]:
                self._active.remove(entry)
                self._finish(entry, entry.error)
            if not self._active:
                self.core.executor.report_timings(wait=True)  # idle: nothing left to stall
            if plan.waiting_for_builds and not plan.calls:  # every group waits on a build: do not spin
                with self._cond:
                    self._cond.wait(BUILD_POLL_S)
