"""A variant's cost against its baseline, timed in pairs until the ratio is known to a given width.

Each pair times the baseline and the variant back to back, in alternating order (AB, BA, ...), so that
drift and other load on the machine hit both alike; the pair's ratio is variant / baseline. The figure is
the geometric mean of the pairs' ratios with a bootstrap interval (percentile, fixed seed); pairs are added
until a stop rule holds for (ratio, low, high) or the time budget is spent, and the report says which. The
rule is the interval narrower than a width (`narrower_than`), or one on figures derived from the ratio: a
monotonic function of the ratio has its interval at the images of `low` and `high` (the bootstrap is
percentile), so e.g. step caching's speedups stop on their own widths (engines/bench/step_cache.py).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: the fewest pairs a figure is reported from: a percentile bootstrap of fewer values has few distinct
#: resamples (35 for 4 values) and understates the interval, so a stop rule is not trusted before this
MIN_PAIRS = 10

#: a stop rule: whether (ratio, low, high) is known well enough
KnownEnough = Callable[[float, float, float], bool]


def narrower_than(width: float) -> KnownEnough:
    """The rule "the ratio's interval is narrower than `width`"."""
    return lambda ratio, low, high: high - low < width


@dataclass(frozen=True)
class PairedRatio:
    ratio: float  # geometric mean of variant / baseline over the pairs
    low: float  # the interval at `confidence`
    high: float
    confidence: float
    pairs: int
    baseline_ms: float  # medians of each side's times
    variant_ms: float
    converged: bool  # the stop rule held (else the budget ran out)
    ratios: tuple[float, ...] = ()  # each pair's variant / baseline, in the order timed

    @property
    def width(self) -> float:
        return self.high - self.low


def ratio_interval(
    ratios: list[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(geometric mean, low, high): a percentile bootstrap of the mean log ratio."""
    logs = [math.log(r) for r in ratios]
    rng = random.Random(seed)
    n = len(logs)
    means = sorted(statistics.fmean(rng.choices(logs, k=n)) for _ in range(resamples))
    tail = (1.0 - confidence) / 2
    low = means[int(tail * (resamples - 1))]
    high = means[int((1.0 - tail) * (resamples - 1))]
    return math.exp(statistics.fmean(logs)), math.exp(low), math.exp(high)


def split_runs(ratios: Sequence[float], sizes: Sequence[int]) -> list[list[float]]:
    """Pairs pooled from runs of `sizes` pairs each, in order (`--resume`), split back into the runs."""
    if sum(sizes) != len(ratios):
        raise ValueError(f"runs of {list(sizes)} pairs do not add up to {len(ratios)} pairs")
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [list(ratios[a:b]) for a, b in itertools.pairwise(bounds)]


def per_run(
    ratios: Sequence[float], sizes: Sequence[int], confidence: float = 0.95
) -> list[tuple[float, float, float]]:
    """(geometric mean, low, high) of each run's own pairs (`split_runs`): runs whose intervals do not
    overlap differ by more than their noise, and the pooled interval, which treats every pair alike,
    understates the uncertainty."""
    return [ratio_interval(run, confidence) for run in split_runs(ratios, sizes)]


def intervals_overlap(intervals: Sequence[tuple[float, float, float]]) -> bool:
    """Whether some value lies in every (figure, low, high) interval."""
    return max(low for _, low, _ in intervals) <= min(high for _, _, high in intervals)


def paired_ratio(
    baseline: Callable[[], object],
    variant: Callable[[], object],
    *,
    known: KnownEnough = narrower_than(0.01),
    min_pairs: int = MIN_PAIRS,
    max_seconds: float = 900.0,
    confidence: float = 0.95,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
    prior: Sequence[float] = (),
    progress: Callable[[str], None] | None = None,
    progress_every: float = 60.0,
) -> PairedRatio:
    """Time `variant` against `baseline` in alternating pairs until `known(ratio, low, high)` holds (after
    at least `min_pairs`; default: the interval narrower than 0.01) or `max_seconds` have passed.

    `prior`: the pair ratios of earlier runs of the same measurement (`realiz3d bench unet --shape sd
    --resume`); the figure, its interval, the stop rule and `min_pairs` count them with this run's pairs,
    the medians (`baseline_ms`, `variant_ms`) are this run's alone. `progress`: called with a line on the
    figure so far (pairs, ratio, interval, minutes spent) every `progress_every` seconds of the clock, so a
    run of an hour says where it stands."""
    for fn in (baseline, variant):
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {"baseline": [], "variant": []}
    ratios: list[float] = list(prior)
    start = last_said = clock()
    while True:
        order = (("baseline", baseline), ("variant", variant))
        if len(ratios) % 2:
            order = order[::-1]
        took = {}
        for name, fn in order:
            t0 = clock()
            fn()
            took[name] = clock() - t0
            times[name].append(took[name])
        ratios.append(took["variant"] / took["baseline"])
        if len(ratios) < min_pairs:
            continue
        ratio, low, high = ratio_interval(ratios, confidence)
        converged = known(ratio, low, high)
        now = clock()
        if progress is not None and now - last_said >= progress_every:
            last_said = now
            progress(
                f"{len(ratios)} pairs: {ratio:.4f} [{low:.4f}, {high:.4f}] (width {high - low:.4f}), "
                f"{(now - start) / 60:.1f} of {max_seconds / 60:g} min"
            )
        if converged or now - start >= max_seconds:
            return PairedRatio(
                ratio=ratio,
                low=low,
                high=high,
                confidence=confidence,
                pairs=len(ratios),
                baseline_ms=statistics.median(times["baseline"]) * 1e3,
                variant_ms=statistics.median(times["variant"]) * 1e3,
                converged=converged,
                ratios=tuple(ratios),
            )


def pairs_sentence(pairs: int, converged: bool, baseline: str, variant: str) -> str:
    """A report's sentence on how a `PairedRatio` of `variant` / `baseline` was timed."""
    how = (
        "until the interval was narrower than the goal"
        if converged
        else "until the time budget ran out, the interval still wider than the goal"
    )
    return (
        f"Timed in {pairs} alternating pairs ({baseline} then {variant}, {variant} then {baseline}, ...), {how}; "
        "the ratio is the pairs' geometric mean with a 95% bootstrap interval (engines/bench/paired.py)."
    )
