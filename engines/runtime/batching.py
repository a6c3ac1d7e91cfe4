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
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engines.errors import JobCanceled
from engines.requests import CancelCheck, ProgressCallback
from engines.runtime.base import UNetRunner, max_batch, run_padded
from engines.runtime.cpu_setup import compute_thread
from engines.sampling.denoise import DenoiseJob
from engines.types import UNetInputs

log = logging.getLogger(__name__)

# on_unet_call(images_in_call, jobs_in_call, seconds)
UNetCallObserver = Callable[[int, int, float], None]


@dataclass
class _Entry:
    job: DenoiseJob
    finished: threading.Event = field(default_factory=threading.Event)
    stepped: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    #: set by the job's own thread (canceled, or its progress callback failed): the batcher drops the job
    stop: BaseException | None = None


def _group_key(job: DenoiseJob, mixes_domains: bool) -> tuple:
    x = job.latents
    key = (job.num_views, tuple(x.shape[1:]), tuple(job.text.shape[1:]), x.dtype)
    return key if mixes_domains else (*key, job.combo)


def batch_inputs(calls: list[UNetInputs]) -> UNetInputs:
    """Concatenate several jobs' UNet calls (same views and shapes) into one."""
    if len(calls) == 1:
        return calls[0]
    geometry = None
    if any(c.geometry is not None for c in calls):
        ref = next(c.geometry for c in calls if c.geometry is not None)
        # A job without geometry is the empty control: zeros, exactly what the UNet uses for None.
        geometry = torch.cat(
            [
                c.geometry if c.geometry is not None else ref.new_zeros((c.batch, *ref.shape[1:]))
                for c in calls
            ]
        )
    return UNetInputs(
        sample=torch.cat([c.sample for c in calls]),
        timestep=torch.cat([c.timestep for c in calls]),
        text=torch.cat([c.text for c in calls]),
        cameras=torch.cat([c.cameras for c in calls]),
        geometry=geometry,
        num_views=calls[0].num_views,
    )


class StepBatcher:
    """Owns the runner; advances all active jobs together, one batched UNet call per group per step."""

    def __init__(
        self,
        runner: UNetRunner,
        max_jobs: int = 8,
        max_wait_s: float = 0.005,
        on_unet_call: UNetCallObserver | None = None,
        threads: int | None = None,
    ) -> None:
        """`threads`: intra-op threads of the batcher's thread, which runs every UNet call (None: torch's
        default for a new thread, i.e. the last count set anywhere in the process)."""
        if max_jobs < 1:
            raise ValueError("max_jobs must be >= 1")
        self.runner = runner
        self.max_jobs = max_jobs
        self.max_wait_s = max_wait_s
        self.on_unet_call = on_unet_call
        self.threads = threads
        # How often a job's thread checks for cancel while the batcher is busy elsewhere (it also checks
        # after every step of its own job).
        self.poll_s = 0.25
        self._waiting: deque[_Entry] = deque()
        self._active: list[_Entry] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="realiz3d-step-batcher", daemon=True)
        self._thread.start()

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
            step = job.step_index
            try:
                if progress is not None:
                    for s in range(reported + 1, step + 1):
                        progress(s, job.num_steps)
                reported = step
                if not done and should_cancel is not None and should_cancel():
                    raise JobCanceled(f"canceled at step {step}/{job.num_steps}")
            except BaseException as e:  # noqa: BLE001 - this job stops; the others go on
                entry.stop = e
                with self._cond:
                    self._cond.notify_all()
                entry.finished.wait()
                raise (entry.error or e) from None  # the job may have failed on its own meanwhile
            if done:
                break
        if entry.error is not None:
            raise entry.error
        return job.latents

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
                self._cond.wait()
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
                    self.runner.prepare(sorted(set(entry.job.combos)))
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
        if self.threads is not None:
            compute_thread(self.threads)
        while self._admit():
            for entry in [e for e in self._active if e.stop is not None]:
                self._active.remove(entry)
                self._finish(entry, entry.stop)
            groups: dict[tuple, list[_Entry]] = {}
            for entry in self._active:
                groups.setdefault(_group_key(entry.job, self.runner.mixes_domains), []).append(entry)
            for members in groups.values():
                self._step_group(members)
            for entry in [e for e in self._active if e.job.done or e.error is not None]:
                self._active.remove(entry)
                self._finish(entry, entry.error)

    def _step_group(self, members: list[_Entry]) -> None:
        for chunk in self._chunks(members):
            self._step_chunk(chunk)

    def _chunks(self, members: list[_Entry]) -> list[list[_Entry]]:
        """Split a group so no call exceeds the runner's largest batch (e.g. a TensorRT profile)."""
        limit = max_batch(self.runner, members[0].job.num_views)
        if limit is None:
            return [members]
        chunks: list[list[_Entry]] = [[]]
        images = 0
        for m in members:
            n = m.job.images_per_call
            if chunks[-1] and images + n > limit:
                chunks.append([])
                images = 0
            chunks[-1].append(m)
            images += n
        return chunks

    def _step_chunk(self, members: list[_Entry]) -> None:
        try:
            calls = [m.job.unet_call() for m in members]
            inputs = batch_inputs(calls)
            if self.runner.mixes_domains:
                domains = [m.job.combo for m, c in zip(members, calls, strict=True) for _ in range(c.batch)]
            else:
                domains = members[0].job.combo
            t0 = time.perf_counter()
            pred = run_padded(self.runner, inputs, domains)
            if self.on_unet_call is not None:
                self.on_unet_call(inputs.batch, len(members), time.perf_counter() - t0)
        except BaseException as e:  # noqa: BLE001 - a failed call fails the jobs in it, not the batcher
            log.exception("batched UNet call failed")
            for m in members:
                m.error = e
            return
        offset = 0
        for m, c in zip(members, calls, strict=True):
            part = pred[offset : offset + c.batch]
            offset += c.batch
            try:
                m.job.advance(part)
            except BaseException as e:  # noqa: BLE001
                m.error = e
            m.stepped.set()
