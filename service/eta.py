"""What a job will cost: `estimated_seconds` in the 202 and in `GET /v1/jobs/{id}` (issue 28, part 3).

Worker side: `WorkerCosts` is the `step_costs` entry of a worker's heartbeat info. It carries the engine
loop's measured seconds per image by step kind and batch size (engines/runtime/step_costs.py) and the
median of the worker's recent jobs' time outside the first denoising call (text encoding, decoding,
saving; for a texture job its unwrap, render, bake, planned views and fill), per job kind. It changes only
when a figure moved by more than `REPUBLISH_CHANGE`: the gateway's POST path checks its snapshot of the live
workers against their infos byte for byte (service/api/submission.py), and a snapshot that changed costs a
second Redis round trip.

Gateway side: the estimate assumes the jobs ahead (`ahead`: queued plus running when the job was stored,
counted by the same store script that stores it) are like this one and that the load stays as it is. On a
worker with `slots` batched slots, n jobs in all (ahead + this one) split evenly across the workers that
serve the kind: this job waits for max(0, n - slots) of them to finish (a full worker finishes `slots`
jobs per run time at full occupancy), then runs its steps in ticks of min(n, slots) jobs' images, each
step costing what the measured table says for a call of that size and step kind, then its outside-denoising
time. `GET` keeps it current: a queued job's estimate counts down from its submission's, never below its own
run; a running job's is its steps left at that occupancy plus the share of its outside time still to come;
a finished job's is 0. None (the field is null): no live worker serving the kind publishes step costs.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from typing import Any

from engines.requests import MultiviewRequest, TextureRequest
from engines.runtime.step_costs import CostTable, per_image, step_kinds
from engines.types import schedule_from_value
from service.jobs.records import JobKind, JobRecord

#: a published figure is replaced once it moved by more than this share
REPUBLISH_CHANGE = 0.1
#: jobs whose outside-denoising time is kept per kind
JOBS_KEPT = 32
_DEFAULTS = {JobKind.multiview: MultiviewRequest, JobKind.texture: TextureRequest}


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
            overhead = {k: float(f"{statistics.median(v):.2g}") for k, v in self._overheads.items() if v}
        now = {"per_image": table, "job_overhead_s": overhead, "step_cache": self.step_cache}
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


class JobShape:
    """A job's denoising work as the estimate sees it: native-resolution images per step, its (full,
    shallow) steps on a worker that caches steps and without."""

    def __init__(self, kind: JobKind, params: dict[str, Any], native: int | None) -> None:
        defaults = _DEFAULTS[kind].model_fields

        def get(name: str) -> Any:
            value = params.get(name)
            return defaults[name].default if value is None else value

        guidance = params.get("guidance_scale")  # None: the model's default, > 1 for every shipped model
        views = int(get("num_views"))
        size = params.get("resolution" if kind == JobKind.multiview else "view_resolution")
        scale = (int(size) / native) ** 2 if size and native else 1.0
        self.images = views * (1 if guidance is not None and float(guidance) <= 1 else 2) * scale
        self.steps = int(get("steps"))
        interval = int(get("cache_interval"))
        combos = None
        if interval > 1 and params.get("schedule") is not None:
            combos = schedule_from_value(params["schedule"]).combos(self.steps)
        self.cached = step_kinds(self.steps, interval, combos)

    def kinds(self, step_cache: bool) -> tuple[int, int]:
        return self.cached if step_cache else (self.steps, 0)


def _serving(workers: list[dict[str, Any]], kind: JobKind) -> list[dict[str, Any]]:
    return [w for w in workers if str(kind) in w.get("queues", []) and isinstance(w.get("step_costs"), dict)]


def _native(worker: dict[str, Any]) -> int | None:
    model = worker.get("model")
    return int(model["resolution"]) if isinstance(model, dict) and model.get("resolution") else None


def _step_seconds(worker: dict[str, Any], shape: JobShape, occupancy: int) -> float | None:
    """Seconds of one of this job's steps, averaged over its step kinds, in ticks of `occupancy` such jobs."""
    costs = worker["step_costs"]
    table: CostTable = costs.get("per_image") or {}
    full, shallow = shape.kinds(bool(costs.get("step_cache")))
    batch = max(1, round(occupancy * shape.images))
    c_full, c_shallow = per_image(table, "full", batch), per_image(table, "shallow", batch)
    if c_full is None or c_shallow is None or not shape.steps:
        return None
    return occupancy * shape.images * (full * c_full + shallow * c_shallow) / shape.steps


def _overhead(worker: dict[str, Any], kind: JobKind) -> float:
    return float((worker["step_costs"].get("job_overhead_s") or {}).get(str(kind), 0.0))


def _worker_eta(worker: dict[str, Any], kind: JobKind, params: dict[str, Any], jobs: float) -> float | None:
    """Seconds until a job ends on `worker` with `jobs` such jobs in all before and with it."""
    shape = JobShape(kind, params, _native(worker))
    slots = max(1, int(worker.get("slots") or 1))
    occupancy = max(1, min(slots, round(jobs)))
    step = _step_seconds(worker, shape, occupancy)
    if step is None:
        return None
    run = shape.steps * step
    full_run = run if occupancy == slots else shape.steps * (_step_seconds(worker, shape, slots) or step)
    wait = max(0.0, jobs - slots) * full_run / slots
    return wait + run + _overhead(worker, kind)


def estimate_new(
    workers: list[dict[str, Any]], kind: JobKind, params: dict[str, Any], ahead: int
) -> float | None:
    """Seconds from submission to the end of a new job with `ahead` jobs queued or running before it (the
    mean over the live workers serving its kind, each taking an even share of the jobs); None: no such
    worker publishes step costs."""
    serving = _serving(workers, kind)
    if not serving:
        return None
    share = (ahead + 1) / len(serving)
    etas = [e for w in serving if (e := _worker_eta(w, kind, params, share)) is not None]
    return round(sum(etas) / len(etas), 3) if etas else None


def estimate_record(workers: list[dict[str, Any]], job: JobRecord, now: float | None = None) -> float | None:
    """Seconds until `job` ends, from its record: 0 once it ended; queued, its submission's estimate
    counted down (never below its own run); running, its steps left on its worker at its occupancy."""
    if job.status.terminal:
        return 0.0
    serving = _serving(workers, job.kind)
    if not serving:
        return None
    now = time.time() if now is None else now
    share = (job.ahead + 1) / len(serving)
    if job.status == "queued":
        at_submission = estimate_new(workers, job.kind, job.params, job.ahead)
        alone = [
            e for w in serving if (e := _worker_eta(w, job.kind, job.params, min(share, 1.0))) is not None
        ]
        if at_submission is None or not alone:
            return None
        own = sum(alone) / len(alone)
        return round(max(own, at_submission - (now - job.created_at)), 3)
    worker = next((w for w in serving if w.get("name") == job.worker), serving[0])
    shape = JobShape(job.kind, job.params, _native(worker))
    slots = max(1, int(worker.get("slots") or 1))
    step = _step_seconds(worker, shape, max(1, min(slots, round(share))))
    if step is None:
        return None
    total = job.progress_total or shape.steps
    left = max(0, total - job.progress_step)
    outside = _overhead(worker, job.kind) * (left / total if job.progress_step else 1.0)
    return round(left * step + outside, 3)


__all__ = ["REPUBLISH_CHANGE", "WorkerCosts", "estimate_new", "estimate_record"]
