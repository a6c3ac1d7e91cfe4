"""The engine loop's parts on their own: the scheduler's plan is plain data, and on a CUDA device the
executor times calls with CUDA events that it reads once they have completed, never synchronizing."""

from __future__ import annotations

import torch

from engines.runtime.engine import EngineCore, Executor, PlannedCall, Scheduler, Slot
from engines.types import DomainSchedule
from tests.test_engine_step_cache import job


class ZerosRunner:
    backend, dtype, mixes_domains = "torch", torch.float32, True

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.calls = 0

    def prepare(self, combos) -> None:  # noqa: ANN001
        pass

    def __call__(self, inputs, domains):  # noqa: ANN001, ANN204
        self.calls += 1
        return torch.zeros(inputs.sample.shape)


def test_the_plan_groups_jobs_by_shape_and_step_kind_and_splits_under_the_budget():
    real = DomainSchedule(domain="real")
    slots = [Slot(job(real, 4, 1)) for _ in range(3)]
    plan = Scheduler(ZerosRunner()).schedule(slots)
    assert [(c.kind, len(c.slots)) for c in plan.calls] == [("full", 3)]
    # a budget of 2 rows of 4x4 cells: one job (1 view, no CFG: 1 row) ... two per call
    plan = Scheduler(ZerosRunner(), max_cells=2 * 16).schedule(slots)
    assert [len(c.slots) for c in plan.calls] == [2, 1]
    caching = Slot(job(real, 4, 2))
    caching.job.advance(torch.zeros(1, 3, 4, 4), torch.zeros(1))  # its next step is shallow
    plan = Scheduler(ZerosRunner()).schedule([*slots, caching])
    assert sorted((c.kind, len(c.slots)) for c in plan.calls) == [("full", 3), ("shallow", 1)]


class FakeEvent:
    """torch.cuda.Event as the executor uses it; `completed` says whether the GPU got there yet."""

    completed = False
    clock = 0.0

    def __init__(self, enable_timing: bool = False) -> None:
        self.at: float | None = None

    def record(self) -> None:
        FakeEvent.clock += 0.25
        self.at = FakeEvent.clock

    def query(self) -> bool:
        return FakeEvent.completed

    def synchronize(self) -> None:
        assert FakeEvent.completed, "waited on an event that has not completed"

    def elapsed_time(self, end: FakeEvent) -> float:
        return (end.at - self.at) * 1e3  # ms


def test_cuda_timings_come_from_events_read_after_the_fact_without_a_synchronize(monkeypatch):
    def no_sync(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("torch.cuda.synchronize in the loop")

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    seen: list[tuple[int, int, float]] = []
    runner = ZerosRunner("cuda")
    core = EngineCore(runner, lambda images, jobs, s: seen.append((images, jobs, s)))
    real = DomainSchedule(domain="real")
    slots = [Slot(job(real, 2, 1)), Slot(job(real, 2, 1))]
    core.step(slots)  # the GPU has not finished: the call is not reported yet, and nothing waited
    assert runner.calls == 1 and seen == [] and all(s.job.step_index == 1 for s in slots)
    FakeEvent.completed = True
    core.step(slots)  # the next tick reads both calls' events
    assert seen == [(2, 2, 0.25), (2, 2, 0.25)]
    assert isinstance(core.executor, Executor) and PlannedCall((), "full").kind == "full"
