"""The engine loop, shaped like vLLM's engine core: schedule -> execute -> update, one tick at a time.

- `Scheduler.schedule(slots)` looks at the active jobs and returns a plain `TickPlan`: which jobs step
  together, in which calls (each under the image budget and the runner's largest batch), and of which
  step kind. It computes nothing and touches no tensor.
- `Executor` owns the runner. `execute(call)` runs one planned call (cut into pieces of whole objects,
  padded to the batch the runner wants) and returns each job's noise prediction. Its timings go to the
  `on_unet_call` observer: on a CUDA device through CUDA events read later (never a synchronize in the
  loop, which would stall the launch queue once per step), on the CPU with the wall clock.
- `EngineCore.step()` is one tick: plan, execute every call, advance each job's state machine
  (`DenoiseJob.advance`) from the executor's outputs. A failed call fails the jobs in it, not the loop.

Two drivers run the same `EngineCore.step()`: `StepBatcher` (engines/runtime/batching.py) on its own
thread for concurrent jobs, with admission and supervision, and `EngineCore.run_alone` on the caller's
thread for a pipeline without batching (like vLLM's `LLMEngine.step()` driven by its caller): the CPU then
computes on the thread that loaded the model, whose OpenMP team already exists
(engines/runtime/cpu_setup.py), and a graph backend builds a new shape in the call, as a lone job
waits for it anyway.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engines.errors import JobCanceled
from engines.requests import CancelCheck, ProgressCallback
from engines.runtime.base import UNetRunner, call_limit, call_pieces, run_padded, run_step_padded
from engines.runtime.step_costs import StepCosts
from engines.sampling.denoise import DenoiseJob
from engines.types import DomainCombo, UNetInputs

log = logging.getLogger(__name__)
#: how long a driver waits when every group it holds waits for a background build
BUILD_POLL_S = 0.05

# on_unet_call(images_in_call, jobs_in_call, seconds)
UNetCallObserver = Callable[[int, int, float], None]


@dataclass(eq=False)
class Slot:
    """One admitted job as the engine core sees it; drivers extend it (events, callbacks)."""

    job: DenoiseJob
    #: set when the job failed (its call, its advance, its build); the driver then finishes it
    error: BaseException | None = None

    def stepped_once(self) -> None:
        """Called after each step the job makes (the batcher wakes the job's thread here)."""


@dataclass(frozen=True)
class PlannedCall:
    """One batched UNet call: these jobs, in this order, one step each, of one step kind."""

    slots: tuple[Slot, ...]
    kind: str = "full"
    #: the runner takes per-sample domains in one call (read once per tick, by the scheduler)
    mixes_domains: bool = True


@dataclass
class TickPlan:
    calls: list[PlannedCall] = field(default_factory=list)
    #: groups skipped this tick because their shape's graphs are being built in the background
    waiting_for_builds: int = 0


def group_key(job: DenoiseJob, mixes_domains: bool) -> tuple:
    """Jobs with equal keys can share a call: same views and shapes, and for fused per-combo weight sets
    the same combo."""
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


class Scheduler:
    """Plans each tick: every active job steps once, grouped into as few calls as the runner and the
    budget allow. `background_builds`: skip a group whose graphs (of its step kind) a graph backend is
    still building (`ready_for`); off, the runner builds on the call (a lone job waits either way)."""

    def __init__(self, runner: UNetRunner, max_cells: int | None = None, background_builds: bool = True):
        self.runner = runner
        self.max_cells = max_cells
        self.background_builds = background_builds

    def schedule(self, slots: Sequence[Slot]) -> TickPlan:
        plan = TickPlan()
        groups: dict[tuple, list[Slot]] = {}
        mixes = self.runner.mixes_domains
        for slot in slots:
            if slot.error is None and not slot.job.done:
                groups.setdefault((slot.job.step_kind, *group_key(slot.job, mixes)), []).append(slot)
        for key, members in groups.items():
            if not self._built(members, key[0]):
                plan.waiting_for_builds += 1
                continue
            members = [m for m in members if m.error is None]  # a failed build failed them
            plan.calls.extend(PlannedCall(tuple(chunk), key[0], mixes) for chunk in self._chunks(members))
        return plan

    def _built(self, members: list[Slot], step_kind: str) -> bool:
        ready_for = getattr(self.runner, "ready_for", None) if self.background_builds else None
        if ready_for is None:
            return True
        job = members[0].job
        try:
            return bool(
                ready_for(
                    job.num_views,
                    *job.latents.shape[-2:],
                    sorted({m.job.combo for m in members}),
                    step_kind=step_kind,
                )
            )
        except BaseException as e:  # noqa: BLE001 - the build failed: the jobs that needed it fail
            log.exception(
                "building the graphs of a %d-view %s group failed", job.num_views, job.latents.shape
            )
            for m in members:
                m.error = e
            return True

    def _chunks(self, members: list[Slot]) -> list[list[Slot]]:
        """Split a group by jobs so no call exceeds `call_limit` (a job above it alone is cut into pieces
        of whole objects by the executor)."""
        if not members:
            return []
        limit = call_limit(
            self.runner, members[0].job.latents.shape, members[0].job.num_views, self.max_cells
        )
        if limit is None:
            return [members]
        chunks: list[list[Slot]] = [[]]
        images = 0
        for m in members:
            n = m.job.images_per_call
            if chunks[-1] and images + n > limit:
                chunks.append([])
                images = 0
            chunks[-1].append(m)
            images += n
        return chunks


class Executor:
    """Owns the runner: runs planned calls and reports their timings (CUDA events, read when done)."""

    def __init__(self, runner: UNetRunner, on_unet_call: UNetCallObserver | None = None) -> None:
        self.runner = runner
        self.on_unet_call = on_unet_call
        self.max_cells: int | None = None
        #: (start, end, images, jobs) of CUDA calls whose end event may not have completed yet
        self._pending: deque[tuple[torch.cuda.Event, torch.cuda.Event, int, int]] = deque()

    def execute(self, call: PlannedCall) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """One step of every job in `call`, in the call's order: each job's noise prediction, and the deep
        feature a full step made for a job that caches steps (else None)."""
        calls = [s.job.unet_call() for s in call.slots]
        inputs = batch_inputs(calls)
        domains: DomainCombo | list[DomainCombo]
        if len(call.slots) > 1 and call.mixes_domains:
            domains = [s.job.combo for s, c in zip(call.slots, calls, strict=True) for _ in range(c.batch)]
        else:
            domains = call.slots[0].job.combo
        starts = [0]
        for c in calls:
            starts.append(starts[-1] + c.batch)
        caching = call.kind == "shallow" or any(s.job.caches for s in call.slots)
        deep_in = torch.cat([s.job.deep for s in call.slots]) if call.kind == "shallow" else None  # type: ignore[misc]
        limit = call_limit(self.runner, inputs.sample.shape, inputs.num_views, self.max_cells)
        preds, deeps = [], []
        for lo, hi, part, part_domains in call_pieces(inputs, domains, limit):
            jobs = sum(1 for a, b in zip(starts, starts[1:], strict=False) if a < hi and b > lo)
            if caching:  # the step-caching path (runners with `step_cache`)
                piece_deep = None if deep_in is None else deep_in[lo:hi]
                pred, deep = self._timed(
                    part.batch, jobs, run_step_padded, self.runner, part, part_domains, piece_deep
                )
                deeps.append(deep)
            else:
                pred = self._timed(part.batch, jobs, run_padded, self.runner, part, part_domains)
            preds.append(pred)
        pred = preds[0] if len(preds) == 1 else torch.cat(preds)
        if not caching or call.kind == "shallow":
            return [(pred[a:b], None) for a, b in zip(starts, starts[1:], strict=False)]
        deep = deeps[0] if len(deeps) == 1 else torch.cat(deeps)
        return [
            (pred[a:b], deep[a:b] if s.job.caches else None)
            for s, a, b in zip(call.slots, starts, starts[1:], strict=False)
        ]

    def _timed(self, images: int, jobs: int, run: Callable, *args):  # noqa: ANN002, ANN202
        if self.on_unet_call is None:
            return run(*args)
        if self.runner.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = run(*args)
            end.record()
            self._pending.append((start, end, images, jobs))
            self.report_timings()
            return out
        t0 = time.perf_counter()
        out = run(*args)
        self.on_unet_call(images, jobs, time.perf_counter() - t0)
        return out

    def report_timings(self, wait: bool = False) -> None:
        """Pass the finished CUDA calls' times to the observer, oldest first; `wait` (the loop is idle)
        waits for the rest too."""
        while self._pending:
            start, end, images, jobs = self._pending[0]
            if not wait and not end.query():
                return
            end.synchronize()
            self._pending.popleft()
            if self.on_unet_call is not None:
                self.on_unet_call(images, jobs, start.elapsed_time(end) / 1e3)


class EngineCore:
    """One tick at a time: `Scheduler` plans, `Executor` runs, each job's state machine advances."""

    def __init__(
        self,
        runner: UNetRunner,
        on_unet_call: UNetCallObserver | None = None,
        max_cells: int | None = None,
        background_builds: bool = True,
        costs: StepCosts | None = None,
    ) -> None:
        """`costs`: where each tick's step costs go (engines/runtime/step_costs.py; a new one if None)."""
        self.scheduler = Scheduler(runner, max_cells, background_builds)
        self.executor = Executor(runner, on_unet_call)
        self.executor.max_cells = max_cells
        self.costs = costs if costs is not None else StepCosts()

    @property
    def runner(self) -> UNetRunner:
        return self.executor.runner

    @property
    def max_cells(self) -> int | None:
        return self.scheduler.max_cells

    @max_cells.setter
    def max_cells(self, value: int | None) -> None:
        self.scheduler.max_cells = self.executor.max_cells = value

    def admit(self, job: DenoiseJob) -> None:
        """What a job needs before its first step: a runner without background builds makes its weight
        sets ready now (graph backends build each shape when first asked for it)."""
        if not hasattr(self.runner, "ready_for"):
            self.runner.prepare(sorted(set(job.combos)))

    def step(self, slots: Sequence[Slot]) -> TickPlan:
        """One tick: every schedulable job makes one step (or fails). Returns the plan it ran. Each call's
        time and the tick's go to `costs` (per image and step kind)."""
        tick_start = time.perf_counter()
        plan = self.scheduler.schedule(slots)
        timed: list[tuple[str, float, float]] = []
        for call in plan.calls:
            try:
                t0 = time.perf_counter()
                preds = self.executor.execute(call)
                rows = sum(s.job.images_per_call for s in call.slots)
                images = self.costs.images(rows, *call.slots[0].job.latents.shape[-2:])
                timed.append((call.kind, images, time.perf_counter() - t0))
            except BaseException as e:  # noqa: BLE001 - a failed call fails the jobs in it, not the loop
                log.exception("batched UNet call failed")
                for s in call.slots:
                    s.error = e
                continue
            for s, (pred, deep) in zip(call.slots, preds, strict=True):
                try:
                    s.job.advance(pred, deep)
                except BaseException as e:  # noqa: BLE001
                    s.error = e
                s.stepped_once()
        self.executor.report_timings()
        self.costs.record_tick(timed, time.perf_counter() - tick_start, sum(len(c.slots) for c in plan.calls))
        return plan

    def run_alone(
        self,
        job: DenoiseJob,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> torch.Tensor:
        """Drive the loop on the caller's thread for one job: cancel checked before every step, progress
        reported after it."""
        self.admit(job)
        slot = Slot(job)
        try:
            while not job.done:
                if should_cancel is not None and should_cancel():
                    raise JobCanceled(f"canceled at step {job.step_index}/{job.num_steps}")
                plan = self.step([slot])
                if slot.error is not None:
                    raise slot.error
                if not plan.calls:  # its shape's graphs are being built in the background
                    time.sleep(BUILD_POLL_S)
                    continue
                if progress is not None:
                    progress(job.step_index, job.num_steps)
        finally:
            self.executor.report_timings(wait=True)
        return job.latents
