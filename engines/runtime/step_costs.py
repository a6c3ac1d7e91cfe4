"""What a denoising step costs on this worker, measured by the engine loop itself (issue 28, part 3).

`StepCosts` keeps, per step kind ("full": the whole UNet, "shallow": its shallow branch on the cached deep
feature) and per batch size (images in one UNet call, in power-of-two buckets), the mean of the last
`WINDOW` seconds per image; the first call of each is left out (it pays the batch's allocations, a graph
backend's build). An image is one UNet-input row at the model's native resolution: a row at twice the size
counts four (pixels, as the image budget counts them). A sample is one planned call of one tick of
`EngineCore.step`: the call's own time plus its share (by images) of the tick's time outside the calls (the
sampler's advance, the plan), so the figures are what a step costs the loop, not only the UNet. The mean,
not the median: an estimate sums many steps, and on a shared machine slow ticks come in a tail (another
tenant's burst) that every job pays, which a median leaves out. A window follows a change of load or
machine within `WINDOW` ticks.

Before any shallow step is measured, a shallow image costs `SHALLOW_PRIOR` of a full one at the same batch
(docs/benchmarks/step_cache.md measures 0.1-0.15 on the shipped model; the prior errs high). A worker's
warm-up runs full steps, so a worker publishes measured full costs from its first heartbeat on.

`table()` is what a worker publishes with its heartbeat (service/eta.py); `per_image()` reads such a table
back. This module imports nothing heavy: the gateway uses it too.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from collections.abc import Callable, Sequence

#: samples kept per (step kind, batch bucket)
WINDOW = 32
#: a shallow image's cost as a share of a full one's, until a shallow step has been measured
SHALLOW_PRIOR = 0.3
#: significant digits of a published cost
DIGITS = 2
STEP_KINDS = ("full", "shallow")

#: {step kind: {batch images (a power of two): seconds per image}}
CostTable = dict[str, dict[str, float]]


def bucket(images: int) -> int:
    """The power of two at or below `images`: calls of 5..7 images share the bucket of 4."""
    return 1 << (max(1, images).bit_length() - 1)


def _round(x: float) -> float:
    return float(f"{x:.{DIGITS}g}")


def per_image(table: CostTable, kind: str, images: int) -> float | None:
    """Seconds per image of one `kind` step in a call of `images` images, from a published table (see
    `CostCurve`)."""
    return CostCurve(table).per_image(kind, images)


class CostCurve:
    """A published table, read: per step kind its measured (batch, seconds per image) points in order."""

    def __init__(self, table: CostTable) -> None:
        self.points = {
            k: sorted((int(b), float(c)) for b, c in rows.items()) for k, rows in table.items() if rows
        }

    def per_image(self, kind: str, images: int) -> float | None:
        """Interpolated between the measured batch sizes around `images` (linear in log2 of the batch),
        the nearest one outside them; a shallow step without measurements costs `SHALLOW_PRIOR` of a full
        one. None: no full step measured."""
        points = self.points.get(kind)
        if not points:
            if kind == "shallow":
                full = self.per_image("full", images)
                return None if full is None else full * SHALLOW_PRIOR
            return None
        x = max(1, images)
        if x <= points[0][0]:
            return points[0][1]
        for (b0, s0), (b1, s1) in zip(points, points[1:], strict=False):
            if x <= b1:
                t = (math.log2(x) - math.log2(b0)) / (math.log2(b1) - math.log2(b0))
                return s0 + t * (s1 - s0)
        return points[-1][1]


def step_kinds(
    num_steps: int, cache_interval: int, combos: Sequence[object] | None = None
) -> tuple[int, int]:
    """(full, shallow) steps of a job: full every `cache_interval` steps and at every step whose domain
    combo differs from the one of the last full step (`DenoiseJob.step_kind`'s rule); `combos`: the
    schedule's combo of each step (None: one combo throughout)."""
    if cache_interval <= 1:
        return num_steps, 0
    full, deep_step, deep_combo = 0, -1, None
    for i in range(num_steps):
        combo = combos[i] if combos is not None else None
        if full_step(i, cache_interval, combo, deep_step, deep_combo):
            full, deep_step, deep_combo = full + 1, i, combo
    return full, num_steps - full


def full_step(step: int, cache_interval: int, combo: object, deep_step: int, deep_combo: object) -> bool:
    """Whether step `step` runs the whole UNet: caching off, no deep feature yet (`deep_step` < 0), a
    domain combo other than the cached feature's, or `cache_interval` steps since it was made."""
    return cache_interval <= 1 or deep_step < 0 or combo != deep_combo or step - deep_step >= cache_interval


class StepCosts:
    """Running per-image step costs of this worker (thread-safe: the engine loop records, the heartbeat
    reads)."""

    def __init__(self, native_cells: int | None = None, window: int = WINDOW) -> None:
        """`native_cells`: UNet-input cells (H x W) of one image at the model's native resolution (None:
        every row counts one image)."""
        self.native_cells = native_cells
        self.window = window
        self._samples: dict[tuple[str, int], deque[float]] = {}
        self._jobs: deque[int] = deque(maxlen=window)
        self._mixes: dict[str, deque[float | None]] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def listen(self, on_new_size: Callable[[], None]) -> None:
        """Call `on_new_size()` (on the engine loop's thread: it must be quick) each time a step kind's
        batch bucket gets its first counted sample: the table then covers a call size it could only
        extrapolate to before, so a worker publishes it now rather than at its next heartbeat."""
        self._listeners.append(on_new_size)

    def images(self, rows: int, height: int, width: int) -> float:
        """Native-resolution images in `rows` UNet-input rows of `height` x `width` cells."""
        return rows * height * width / self.native_cells if self.native_cells else float(rows)

    def record(self, kind: str, images: float, seconds: float) -> None:
        """One call of `images` images and step kind `kind` took `seconds` of the loop."""
        if images <= 0 or not seconds > 0:
            return
        key = (kind, bucket(round(images)))
        with self._lock:
            samples = self._samples.get(key)
            if samples is None:  # the first call of a batch size pays its allocations (a graph backend
                self._samples[key] = deque(maxlen=self.window)  # its build): not a step's cost
                return
            new_size = not samples
            samples.append(seconds / images)
        if new_size:
            for on_new_size in self._listeners:
                on_new_size()

    def record_tick(self, calls: Sequence[tuple[str, float, float]], tick_seconds: float, jobs: int) -> None:
        """One tick's calls as (step kind, images, the call's own seconds): each gets its own time plus its
        share by images of the tick's time outside the calls; `jobs`: the jobs that stepped in it."""
        images = sum(n for _, n, _ in calls)
        if not images:
            return
        by_kind: dict[str, float] = {}
        for kind, n, _ in calls:
            by_kind[kind] = by_kind.get(kind, 0.0) + n
        with self._lock:
            self._jobs.append(jobs)
            for kind, n in by_kind.items():  # None: a tick of this kind alone
                share = n / images if len(by_kind) > 1 else None
                self._mixes.setdefault(kind, deque(maxlen=self.window)).append(share)
        outside = max(0.0, tick_seconds - sum(s for _, _, s in calls))
        for kind, n, seconds in calls:
            self.record(kind, n, seconds + outside * n / images)

    def occupancy(self) -> int | None:
        """Jobs per tick, the median of the last `WINDOW` ticks (None: no tick yet): the load as it is."""
        with self._lock:
            return round(statistics.median(self._jobs)) if self._jobs else None

    def call_mix(self) -> dict[str, dict[str, float]]:
        """Per step kind, over the last `WINDOW` ticks that ran it: `mixed`, the share of them that also
        ran the other kind's call (0 while jobs step in lockstep: a tick is one kind's call), and
        `share`, the mean share of a mixed tick's images in this kind's call. Every job in a tick waits
        for all of its calls. The load as it is, like `occupancy`."""
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            for kind, ticks in sorted(self._mixes.items()):
                shares = [x for x in ticks if x is not None]
                if ticks:
                    out[kind] = {
                        "mixed": round(len(shares) / len(ticks), 2),
                        "share": round(statistics.fmean(shares), 2) if shares else 1.0,
                    }
        return out

    def table(self) -> CostTable:
        """{step kind: {batch bucket: mean seconds per image}}, rounded to `DIGITS` significant digits."""
        with self._lock:
            items = [(k, b, statistics.fmean(s)) for (k, b), s in self._samples.items() if s]
        out: CostTable = {}
        for kind, b, mean in sorted(items):
            out.setdefault(kind, {})[str(b)] = _round(mean)
        return out


__all__ = [
    "STEP_KINDS",
    "CostCurve",
    "CostTable",
    "StepCosts",
    "bucket",
    "full_step",
    "per_image",
    "step_kinds",
]
