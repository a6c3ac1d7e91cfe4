"""What a job will cost: `estimated_seconds` in the 202 and in `GET /v1/jobs/{id}` (issue 28, part 3).

Worker side: `WorkerCosts` is the `step_costs` entry of a worker's heartbeat info. It carries the engine
loop's measured seconds per image by step kind and batch size (engines/runtime/step_costs.py) and the
mean of the worker's recent jobs' time outside the first denoising call (text encoding, decoding,
saving; for a texture job its unwrap, render, bake, planned views and fill), per job kind. It changes only
when a figure moved by more than `REPUBLISH_CHANGE`: the gateway's POST path checks its snapshot of the live
workers against their infos byte for byte (service/api/submission.py), and a snapshot that changed costs a
second Redis round trip.

Gateway side: the estimate assumes the jobs ahead (`ahead`: queued plus running when the job was stored,
counted by the same store script that stores it) are like this one and that the load stays as it is. On a
worker with `slots` batched slots, n jobs in all (ahead + this one) split evenly across the workers that
serve the kind: this job waits for max(0, n - slots) of them to finish (each holds its slot for a run at
full occupancy plus its outside time), then runs its steps in ticks of min(slots, max(n, the jobs per tick
the worker published: its recent load)) jobs' images, then its outside-denoising time. A tick runs one call
per step kind, and every job in it waits for the whole tick. The worker publishes, beside the occupancy,
how its recent ticks mixed (`call_mix`: per step kind, the share of its ticks that also ran the other
kind's call, and its share of those ticks' images; lockstep jobs never mix): a step of kind k is, that
often, k's call of its share of the tick's images plus the other kind's call of the rest, and otherwise
one call of all of them, each call costing what the measured table says for its size and kind. `GET` keeps it current: a queued job's estimate counts down from its submission's, never below its own
run; a running job's is its steps left at that occupancy plus the share of its outside time still to come;
a finished job's is 0. None (the field is null): no live worker serving the kind publishes step costs.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

from engines.requests import MultiviewRequest, TextureRequest
from engines.runtime.step_costs import CostCurve, step_kinds
from engines.types import schedule_from_value
from service.jobs.records import JobKind, JobRecord, JobStatus

#: a published figure is replaced once it moved by more than this share
REPUBLISH_CHANGE = 0.1
#: jobs whose outside-denoising time is kept per kind
JOBS_KEPT = 32


class WorkerCosts:
    """A worker's `step_costs` heartbeat entry: {"per_image": table, "job_overhead_s": {kind: s},
    "step_cache": bool}; `step_costs` is the pipeline's StepCosts (None: a pipeline that measures none)."""

    def __init__(self, step_costs: Any = None, step_cache: bool = False) -> None:
        self.step_costs = step_costs
        self.step_cache = step_cache
        self._overheads: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._published: dict[str, Any] | None = None

    @classmethod
    def of(cls, pipeline: Any) -> WorkerCosts:
        runner = getattr(pipeline, "runner", None)
        return cls(getattr(pipeline, "step_costs", None), bool(getattr(runner, "step_cache", False)))

    def listen(self, on_new_size: Callable[[], None]) -> None:
        """`on_new_size()` whenever the step table gains a measured call size (`StepCosts.listen`): the
        heartbeat publishes then, so estimates stop extrapolating from the warm-up's small calls within
        a tick instead of within a heartbeat period."""
        if self.step_costs is not None and hasattr(self.step_costs, "listen"):
            self.step_costs.listen(on_new_size)

    def record_job(self, kind: str, run_seconds: float, denoise_seconds: float) -> None:
        """A job ran `run_seconds`, `denoise_seconds` of them in its (first) denoising call."""
        with self._lock:
            kept = self._overheads.setdefault(str(kind), deque(maxlen=JOBS_KEPT))
            kept.append(max(0.0, run_seconds - denoise_seconds))

    def entry(self) -> dict[str, Any] | None:
        """What the next heartbeat publishes (the last one, unless a figure moved enough); None: no step
        measured yet."""
        table = self.step_costs.table() if self.step_costs is not None else {}
        if not table:
            return None
        with self._lock:
            overhead = {k: float(f"{statistics.fmean(v):.2g}") for k, v in self._overheads.items() if v}
        now = {
            "per_image": table,
            "occupancy": self.step_costs.occupancy() or 1,
            "call_mix": self.step_costs.call_mix() if hasattr(self.step_costs, "call_mix") else {},
            "job_overhead_s": overhead,
            "step_cache": self.step_cache,
        }
        if self._published is None or _moved(self._published, now):
            self._published = now
        return self._published


def _moved(old: Any, new: Any) -> bool:
    """Whether `new` differs from `old` in its keys, or a number by more than REPUBLISH_CHANGE."""
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() != new.keys() or any(_moved(old[k], new[k]) for k in old)
    if isinstance(old, bool) or isinstance(new, bool) or not isinstance(old, int | float):
        return old != new
    return abs(new - old) > REPUBLISH_CHANGE * max(abs(old), 1e-12)


class JobShape(NamedTuple):
    """A job's denoising work as the estimate sees it: rows per step (views, x 2 with guidance), its image
    size (None: the model's native one), steps, and its (full, shallow) steps where steps are cached."""

    rows: int
    size: int | None
    steps: int
    cached: tuple[int, int]

    @classmethod
    def of(cls, kind: JobKind, params: dict[str, Any]) -> JobShape:
        defaults = _DEFAULTS[kind]
        views, steps, interval = (params.get(k) or defaults[k] for k in _SHAPE_FIELDS)
        guidance = params.get("guidance_scale")  # None: the model's default, > 1 for every shipped model
        rows = int(views) * (1 if guidance is not None and float(guidance) <= 1 else 2)
        size = params.get("resolution" if kind == JobKind.multiview else "view_resolution")
        schedule = params.get("schedule") if int(interval) > 1 else None
        key = None if schedule is None else json.dumps(schedule, sort_keys=True)
        return cls(rows, int(size) if size else None, int(steps), _step_kinds(int(steps), int(interval), key))

    def images(self, native: int | None) -> float:
        """Native-resolution images per step (pixels count: twice the size is four)."""
        return self.rows * ((self.size / native) ** 2 if self.size and native else 1.0)


_SHAPE_FIELDS = ("num_views", "steps", "cache_interval")
_DEFAULTS = {
    kind: {name: model.model_fields[name].default for name in _SHAPE_FIELDS}
    for kind, model in ((JobKind.multiview, MultiviewRequest), (JobKind.texture, TextureRequest))
}


@lru_cache(maxsize=512)
def _step_kinds(steps: int, interval: int, schedule: str | None) -> tuple[int, int]:
    combos = None if schedule is None else schedule_from_value(json.loads(schedule)).combos(steps)
    return step_kinds(steps, interval, combos)


class _Worker(NamedTuple):
    """A live worker's info as the estimate reads it (parsed once per info dict)."""

    name: str | None
    slots: int
    native: int | None
    costs: CostCurve
    step_cache: bool
    overhead: dict[str, float]
    occupancy: int
    call_mix: dict[str, tuple[float, float]]  # step kind -> (share of its ticks mixed, its share of those)

    @classmethod
    def of(cls, info: dict[str, Any]) -> _Worker:
        parsed = info.get(_PARSED)
        if parsed is None:
            costs, model = info["step_costs"], info.get("model")
            native = model.get("resolution") if isinstance(model, dict) else None
            parsed = info[_PARSED] = cls(
                info.get("name"),
                max(1, int(info.get("slots") or 1)),
                int(native) if native else None,
                CostCurve(costs.get("per_image") or {}),
                bool(costs.get("step_cache")),
                costs.get("job_overhead_s") or {},
                max(1, int(costs.get("occupancy") or 1)),
                {
                    k: (_share(v.get("mixed"), 0.0), _share(v.get("share"), 1.0))
                    for k, v in (costs.get("call_mix") or {}).items()
                    if isinstance(v, dict)
                },
            )
        return parsed

    def occupied(self, jobs: float) -> int:
        """Jobs sharing the ticks with `jobs` in all here: as many as there are, or as the worker has been
        stepping lately (the load stays as it is), at most its slots."""
        return max(1, min(self.slots, max(round(jobs), self.occupancy)))

    def step_seconds(self, job: JobShape, occupancy: int) -> float | None:
        """Seconds of one of the job's steps, averaged over its step kinds, in ticks of `occupancy` such
        jobs. A tick runs one call per step kind and every job in it waits for the whole tick: a step of
        kind k is, in the share of k's recent ticks the worker published as mixed (`call_mix`; none
        published: lockstep), a call of k's share of the tick's images plus the other kind's call of
        the rest, and otherwise one call of all of them; each call costs what the measured table says for
        its size."""
        full, shallow = job.cached if self.step_cache else (job.steps, 0)
        if not job.steps:
            return None
        images = occupancy * job.images(self.native)
        seconds = 0.0
        for kind, other, steps in (("full", "shallow", full), ("shallow", "full", shallow)):
            if not steps:
                continue
            mixed, share = self.call_mix.get(kind, (0.0, 1.0))
            alone = self._call_seconds(kind, images)
            own = self._call_seconds(kind, images * share)
            rest = self._call_seconds(other, images * (1 - share)) if images * (1 - share) >= 0.5 else 0.0
            if alone is None or own is None or rest is None:
                return None
            seconds += steps * ((1 - mixed) * alone + mixed * (own + rest))
        return seconds / job.steps

    def _call_seconds(self, kind: str, images: float) -> float | None:
        cost = self.costs.per_image(kind, max(1, round(images)))
        return None if cost is None else images * cost

    def eta(self, kind: JobKind, job: JobShape, jobs: float) -> float | None:
        """Seconds until a job ends here with `jobs` such jobs in all before and with it."""
        occupancy = self.occupied(jobs)
        step = self.step_seconds(job, occupancy)
        if step is None:
            return None
        run = job.steps * step
        outside = self.overhead.get(str(kind), 0.0)
        wait = 0.0
        if jobs > self.slots:  # slots full: a slot frees every (a run at full occupancy + outside) / slots
            full = job.steps * (self.step_seconds(job, self.slots) or step)
            wait = (jobs - self.slots) * (full + outside) / self.slots
        return wait + run + outside


def _share(value: Any, default: float) -> float:
    """A published share, clamped to [0, 1]; `default` where it is missing or not a number."""
    try:
        return min(1.0, max(0.0, float(value)))
    except (TypeError, ValueError):
        return default


#: where `_Worker.of` keeps its parse in a worker's info dict (never published)
_PARSED = "_eta"


def _serving(workers: list[dict[str, Any]], kind: JobKind) -> list[_Worker]:
    return [
        _Worker.of(w)
        for w in workers
        if str(kind) in w.get("queues", ()) and isinstance(w.get("step_costs"), dict)
    ]


def _mean_eta(serving: list[_Worker], kind: JobKind, job: JobShape, jobs: float) -> float | None:
    etas = [e for w in serving if (e := w.eta(kind, job, jobs)) is not None]
    return sum(etas) / len(etas) if etas else None


def estimate_new(
    workers: list[dict[str, Any]], kind: JobKind, params: dict[str, Any], ahead: int
) -> float | None:
    """Seconds from submission to the end of a new job with `ahead` jobs queued or running before it (the
    mean over the live workers serving its kind, each taking an even share of the jobs); None: no such
    worker publishes step costs."""
    serving = _serving(workers, kind)
    if not serving:
        return None
    eta = _mean_eta(serving, kind, JobShape.of(kind, params), (ahead + 1) / len(serving))
    return None if eta is None else round(eta, 3)


def estimate_record(workers: list[dict[str, Any]], job: JobRecord, now: float | None = None) -> float | None:
    """Seconds until `job` ends, from its record: 0 once it ended; queued, its submission's estimate
    counted down (never below its own run); running, its steps left on its worker at its occupancy."""
    if job.status.terminal:
        return 0.0
    serving = _serving(workers, job.kind)
    if not serving:
        return None
    shape = JobShape.of(job.kind, job.params)
    share = (job.ahead + 1) / len(serving)
    if job.status == JobStatus.queued:
        at_submission = _mean_eta(serving, job.kind, shape, share)
        own = _mean_eta(serving, job.kind, shape, min(share, 1.0))
        if at_submission is None or own is None:
            return None
        now = time.time() if now is None else now
        return round(max(own, at_submission - (now - job.created_at)), 3)
    worker = next((w for w in serving if w.name == job.worker), serving[0])
    step = worker.step_seconds(shape, worker.occupied(share))
    if step is None:
        return None
    total = job.progress_total or shape.steps
    left = max(0, total - job.progress_step)
    outside = worker.overhead.get(str(job.kind), 0.0) * (left / total if job.progress_step else 1.0)
    return round(left * step + outside, 3)


__all__ = ["REPUBLISH_CHANGE", "JobShape", "WorkerCosts", "estimate_new", "estimate_record"]
