"""`realiz3d bench cache`: what step caching (`cache_interval`, engines/models/deep_cache.py) saves.

The report's sections (`SECTIONS`; `--section NAME` measures one and merges it into the step_cache.json
already there, the others keep their figures, and the section keeps the speedups and intervals of the
run it replaces, saying per interval whether the runs' intervals overlap). Each timed loop stops when its
intervals are narrower than a goal fraction of the figure (`--interval-width`, default `INTERVAL_GOAL`) or
its time budget (`--max-minutes`) is spent, and says which.

- **shipped**: whole denoising loops through the pipeline (4 views, CFG, the model's default schedule,
  20 steps, one seed), at each cache interval, in interleaved rounds; the denoise stage's seconds are
  compared per round (N=1 / N). The images' mean absolute difference from N=1 (levels of 255) is
  reported beside: a sanity figure, not the quality evaluation.
- **onnx**: the same loops through the `onnx` backend (the full graph, which also outputs the deep
  feature, and the shallow graph: engines/runtime/onnx_export.py) at N = 1 and 3.
- **batched**: jobs/s of 8 jobs at once through the step batcher, all at N=1, mixed N=1,2,3,5 and all
  at N=3, eager and on ONNX Runtime; a warm-up round builds every graph before the timed rounds.
- **sd**: the SD-1.x-shaped UNet (engines/bench/sd_like.py, 64x64 latents, one view x CFG): a full and a
  shallow step timed in alternating pairs (engines/bench/paired.py) for the ratio r = shallow / full;
  the denoise time at N counts the full (nf) and shallow (ns) steps `DenoiseJob.step_kind` plans for 20
  steps, so speedup(N) = 20 / (nf + ns r) (a loop of that model takes minutes per interval on a 2-core
  CPU). Pairs are added until every speedup's interval is narrower than the goal fraction of it.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engines.bench import OUT_DIR
from engines.bench.machine import describe, describe_conditions, run_conditions, torch_machine
from engines.bench.paired import (
    MIN_PAIRS,
    PairedRatio,
    intervals_overlap,
    paired_ratio,
    pairs_sentence,
    ratio_interval,
)

INTERVALS = (1, 2, 3, 5)
#: the ONNX Runtime loops: full compute against the interval the issue's goal names
ONNX_INTERVALS = (1, 3)
#: the backends of the batched section
BATCHED_BACKENDS = ("torch", "onnx")
STEPS = 20
#: a timed figure is known when its 95% interval is narrower than this fraction of it (`--interval-width`)
INTERVAL_GOAL = 0.01


def step_kinds(schedule, steps: int, interval: int) -> str:  # noqa: ANN001 - a DomainSchedule
    """The kinds the engine plans for one job: "F"ull and "S"hallow, in order."""
    import torch

    from engines.models.realiz3d_model import DEFAULT_SCHEDULER_CONFIG
    from engines.sampling.denoise import DenoiseJob, make_scheduler

    z = torch.zeros(1, 1, 1, 1)
    job = DenoiseJob(
        scheduler=make_scheduler("ddim", DEFAULT_SCHEDULER_CONFIG),
        latents=z,
        text=torch.zeros(1, 1, 1),
        uncond_text=torch.zeros(1, 1, 1),
        cameras=torch.zeros(1, 16),
        geometry=None,
        guidance_scale=1.0,
        schedule=schedule,
        num_steps=steps,
        cache_interval=interval,
    )
    out = ""
    while not job.done:
        kind = job.step_kind
        out += kind[0].upper()
        job.advance(z, z if kind == "full" else None)
    return out


def shipped_model(
    max_seconds: float,
    min_rounds: int = MIN_PAIRS,
    backend: str = "torch",
    intervals: tuple[int, ...] = INTERVALS,
    engine_cache_dir: str | Path | None = None,
    goal: float = INTERVAL_GOAL,
) -> dict:
    """Denoise loops at each of `intervals` (the first is 1) through a `backend` pipeline, in rounds
    until every speedup's 95% interval is narrower than `goal` of it or `max_seconds` are spent."""
    import numpy as np

    from engines.pipelines import Realiz3DPipeline
    from engines.requests import MultiviewRequest

    pipe = Realiz3DPipeline.load(device="cpu", backend=backend, engine_cache_dir=engine_cache_dir)
    schedule = pipe.config.default_schedule

    def request(n: int) -> MultiviewRequest:
        return MultiviewRequest(prompt="a red chair", num_views=4, steps=STEPS, seed=7, cache_interval=n)

    images = {n: np.stack(pipe.multiview(request(n)).images).astype(float) for n in intervals}  # warm-up
    seconds: dict[int, list[float]] = {n: [] for n in intervals}
    start = last_said = time.monotonic()
    rounds = 0
    while True:
        for n in intervals:  # interleaved: drift and other load hit every interval alike
            seconds[n].append(pipe.multiview(request(n)).timings["denoise"])
        rounds += 1
        if rounds < min_rounds:
            continue
        # per round, N=1's time over N's: a paired ratio, summarised as paired.py does (geometric mean)
        speedups = {
            n: ratio_interval([a / b for a, b in zip(seconds[1], seconds[n], strict=True)]) for n in intervals
        }
        converged = all((hi - lo) < goal * g for g, lo, hi in speedups.values())
        if time.monotonic() - last_said >= 60:  # a run of many minutes says where it stands
            last_said = time.monotonic()
            print(
                f"bench cache {backend}: {rounds} rounds, "
                + ", ".join(
                    f"N={n} {g:.4f} ({(hi - lo) / g:.2%} wide)"
                    for n, (g, lo, hi) in speedups.items()
                    if n > 1
                )
                + f", {(last_said - start) / 60:.1f} of {max_seconds / 60:g} min",
                flush=True,
            )
        if converged or time.monotonic() - start > max_seconds:
            break
    rows = []
    for n in intervals:
        g, lo, hi = speedups[n]
        rows.append(
            {
                "cache_interval": n,
                "step_kinds": step_kinds(schedule, STEPS, n),
                "denoise_s_median": round(statistics.median(seconds[n]), 4),
                "speedup": round(g, 4),
                "speedup_ci95": [round(lo, 4), round(hi, 4)],
                "ci_width_over_speedup": round((hi - lo) / g, 4),
                "converged": (hi - lo) < goal * g,
                "mean_abs_diff_vs_n1": round(float(np.abs(images[n] - images[1]).mean()), 3),
            }
        )
    return {
        "model": pipe.config.name,
        "backend": backend,
        "job": f"4 views, CFG, {STEPS} steps, schedule {schedule.model_dump(exclude_defaults=True)}, seed 7",
        "rounds": rounds,
        "interval_goal": goal,
        "rows": rows,
    }


def batched_throughput(
    backend: str = "torch",
    max_seconds: float = 900.0,
    rounds: int = 3,
    jobs: int = 8,
    engine_cache_dir: str | Path | None = None,
) -> list[dict]:
    """Jobs/s of a batching `backend` pipeline (max_jobs = `jobs`, all submitted at once, 4 views, CFG, 20
    steps): every job at N=1, a mix of N=1,2,3,5, every job at N=3; interleaved rounds, median wall time.
    A warm-up round runs every mix first and the background builds it started (a caching job's shallow
    graph) finish before the timed rounds, which stop after `rounds` or once `max_seconds` are spent (at
    least one); a timed round that loads a graph raises."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from engines.pipelines import Realiz3DPipeline
    from engines.requests import MultiviewRequest

    pipe = Realiz3DPipeline.load(device="cpu", backend=backend, engine_cache_dir=engine_cache_dir)
    pipe.enable_batching(max_jobs=jobs, max_wait_ms=2000, threads=torch.get_num_threads())
    mixes = {
        "all N=1": [1] * jobs,
        "mixed N=1,2,3,5": [INTERVALS[i % 4] for i in range(jobs)],
        "all N=3": [3] * jobs,
    }
    graphs = getattr(pipe.runner, "entries", [])  # graph runners: every graph loaded so far
    builds = getattr(pipe.runner, "builds", None)

    def run_round(pool: ThreadPoolExecutor) -> dict[str, float]:
        took = {}
        for name, intervals in mixes.items():
            reqs = [
                MultiviewRequest(prompt=f"object {i}", num_views=4, steps=STEPS, seed=i, cache_interval=n)
                for i, n in enumerate(intervals)
            ]
            t0 = time.perf_counter()
            list(pool.map(pipe.multiview, reqs))
            took[name] = time.perf_counter() - t0
        return took

    seconds: dict[str, list[float]] = {k: [] for k in mixes}
    try:
        with ThreadPoolExecutor(jobs) as pool:
            run_round(pool)  # warm-up: every graph the mixes use is built (or loaded) here
            while builds is not None and builds.building():
                time.sleep(0.1)
            loaded = len(graphs)
            start = time.monotonic()
            while len(seconds["all N=1"]) < rounds and (
                not seconds["all N=1"] or time.monotonic() - start < max_seconds
            ):
                for name, took in run_round(pool).items():
                    seconds[name].append(took)
                if len(graphs) != loaded:
                    raise RuntimeError(
                        f"bench cache: a timed {backend} round loaded a graph: {graphs[loaded:]}"
                    )
    finally:
        pipe.batcher.close()
    return [
        {
            "backend": backend,
            "mix": k,
            "wall_s": [round(t, 3) for t in v],
            "jobs_per_s": round(jobs / statistics.median(v), 3),
        }
        for k, v in seconds.items()
    ]


def batched(max_seconds: float, engine_cache_dir: str | Path | None = None, jobs: int = 8) -> dict:
    """The batched section: `batched_throughput` on each of `BATCHED_BACKENDS`, `max_seconds` each."""
    rows = [
        row
        for backend in BATCHED_BACKENDS
        for row in batched_throughput(backend, max_seconds, jobs=jobs, engine_cache_dir=engine_cache_dir)
    ]
    return {"jobs": jobs, "rows": rows}


def cache_speedup(kinds: str, ratio: float) -> float:
    """Denoise speedup of a job whose steps are `kinds` ("F"/"S") over all-full steps, when a shallow step
    takes `ratio` of a full one: len / (nf + ns * ratio)."""
    return len(kinds) / (kinds.count("F") + kinds.count("S") * ratio)


def _speedup_width(kinds: str, ratio: float, low: float, high: float) -> float:
    """The width of a speedup's interval, as a fraction of it: the speedup falls as the ratio rises, so
    its interval runs from the ratio's `high` to its `low`."""
    return (cache_speedup(kinds, low) - cache_speedup(kinds, high)) / cache_speedup(kinds, ratio)


def step_cache_ratio(
    full: Callable[[], object],
    shallow: Callable[[], object],
    kinds: dict[int, str],
    max_seconds: float,
    goal: float = INTERVAL_GOAL,
    **paired: object,
) -> tuple[PairedRatio, list[dict]]:
    """Time `shallow` against `full` in alternating pairs until the speedup of every plan in `kinds`
    (cache interval -> step kinds) has an interval narrower than `goal` of it, or `max_seconds` are
    spent; the paired ratio and one row per interval. `paired`: more `paired_ratio` arguments."""

    def known(ratio: float, low: float, high: float) -> bool:
        return all(_speedup_width(k, ratio, low, high) < goal for k in kinds.values())

    r = paired_ratio(full, shallow, known=known, max_seconds=max_seconds, **paired)  # type: ignore[arg-type]
    rows = []
    for n, k in kinds.items():
        width = _speedup_width(k, r.ratio, r.low, r.high)
        rows.append(
            {
                "cache_interval": n,
                "step_kinds": k,
                "denoise_s": round(r.baseline_ms / 1e3 * len(k) / cache_speedup(k, r.ratio), 2),
                "speedup": round(cache_speedup(k, r.ratio), 4),
                "speedup_ci95": [round(cache_speedup(k, r.high), 4), round(cache_speedup(k, r.low), 4)],
                "ci_width_over_speedup": round(width, 4),
                "converged": width < goal,
            }
        )
    return r, rows


def sd_shaped(max_seconds: float, min_pairs: int = MIN_PAIRS, goal: float = INTERVAL_GOAL) -> dict:
    """The sd section: `step_cache_ratio` on the SD-1.x-shaped UNet's full and shallow steps."""
    import torch

    from engines.bench.sd_like import sd_like_model
    from engines.bench.unet import unet_inputs
    from engines.runtime.torch_runner import TorchRunner
    from engines.types import uniform_combo

    with torch.no_grad():
        model = sd_like_model()
        model.eval()
        runner = TorchRunner(model)
        runner.prepare([])
        x = unet_inputs(model, views=1, objects=1)
        combos = [uniform_combo("real")] * x.batch
        _, deep = runner.run_step(x, combos)
        kinds = {n: step_kinds(model.config.default_schedule, STEPS, n) for n in INTERVALS}
        r, rows = step_cache_ratio(
            lambda: runner(x, combos),
            lambda: runner.run_step(x, combos, deep),
            kinds,
            max_seconds,
            goal,
            warmup=1,
            min_pairs=min_pairs,
            progress=lambda line: print(f"bench cache sd, shallow / full: {line}", flush=True),
        )
    return {
        "model": f"seeded SD-1.x-shaped UNet (engines/bench/sd_like.py), 64x64 latents, "
        f"{model.parameter_count():,} parameters",
        "unet_batch": x.batch,
        "method": f"{pairs_sentence(r.pairs, r.converged, 'full', 'shallow')} Shallow / full = {r.ratio:.4f} "
        f"(95% {r.low:.4f}-{r.high:.4f}); speedup at N = {STEPS} / (full steps + shallow steps x that ratio), "
        f"its interval the ratio's mapped through it; the goal: every speedup's interval narrower than "
        f"{goal * 100:g}% of it, in {max_seconds / 60:g} minutes at most.",
        "pairs": r.pairs,
        "pair_ratios": [round(x, 5) for x in r.ratios],
        "converged": r.converged,
        "interval_goal": goal,
        "full_step_ms": round(r.baseline_ms, 1),
        "shallow_step_ms": round(r.variant_ms, 1),
        "rows": rows,
    }


def run_step_cache_bench(
    out_dir: str | Path = OUT_DIR,
    max_seconds: float = 900.0,
    section: str | None = None,
    engine_cache_dir: str | Path | None = None,
    goal: float = INTERVAL_GOAL,
) -> dict:
    """Writes step_cache.json and step_cache.md: every section, each timed loop stopping when its
    intervals are narrower than `goal` of its figures or after `max_seconds`. `section`: measure only that
    one and merge it into the step_cache.json already in `out_dir` (the other sections keep their figures)."""
    from engines.errors import UserInputError

    out = Path(out_dir)
    report = out / "step_cache.json"
    if section is not None and section not in SECTIONS:
        raise UserInputError(f"bench cache: unknown section {section!r} (one of {', '.join(SECTIONS)})")
    if section is not None and not report.is_file():
        raise UserInputError(
            f"--section {section} merges into {report}, which is not there: run `realiz3d bench cache` first"
        )
    cache = Path(engine_cache_dir) if engine_cache_dir is not None else None
    if section is None:
        result = {"machine": torch_machine()}
        names = list(SECTIONS)
    else:
        result = json.loads(report.read_text())
        names = [section]
    for name in names:
        earlier = result.get(name) if section is not None else None
        result[name] = {
            "machine": torch_machine(),
            **SECTIONS[name].measure(Budget(max_seconds, goal, cache)),
        }
        if earlier is not None and any("speedup_ci95" in r for r in earlier.get("rows", [])):
            result[name]["earlier_runs"] = earlier.get("earlier_runs", []) + [earlier_run(earlier)]
    out.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=2))
    write_report(result, out)
    return result


def earlier_run(figures: dict) -> dict:
    """What a section's report keeps of a run that a later `--section` run replaced: each interval's
    speedup and 95% interval, how long it ran, its machine's load and CPU model (where recorded)."""
    return {
        "measured": f"{figures['rounds']} rounds" if "rounds" in figures else f"{figures['pairs']} pairs",
        **run_conditions(figures.get("machine", {})),
        "speedups": {str(r["cache_interval"]): [r["speedup"], *r["speedup_ci95"]] for r in figures["rows"]},
    }


def _earlier_lines(figures: dict) -> list[str]:
    """The earlier runs of a section, and per interval whether every run's interval overlaps this one's:
    where they do not, runs differ by more than one run's interval, and the figure is known to no better
    than that spread. Where earlier runs recorded this run's CPU model, the same verdict for those runs
    alone: runs on one processor can agree while runs on different ones do not."""
    runs = figures.get("earlier_runs", [])
    if not runs:
        return []
    lines = ["", f"Earlier runs of this section, replaced by the one above ({len(runs)}):", ""]
    for run in runs:
        each = "; ".join(f"N={n} {g} [{lo}, {hi}]" for n, (g, lo, hi) in run["speedups"].items() if n != "1")
        lines.append(f"- {run['measured']}{describe_conditions(run)}: {each}")
    verdict = _overlap_verdicts(figures["rows"], runs)
    every = "Both runs" if len(runs) == 1 else f"All {len(runs) + 1} runs"
    lines += ["", f"{every}: {verdict}."] if verdict else []
    here = figures.get("machine", {}).get("cpu_model")
    same = [run for run in runs if here and run.get("cpu_model") == here]
    if same:
        lines += [
            "",
            f"The {len(same) + 1} runs on this run's CPU model ({here}): "
            f"{_overlap_verdicts(figures['rows'], same)}.",
        ]
    return lines


def _overlap_verdicts(rows: list[dict], runs: list[dict]) -> str:
    """Per cache interval above 1, whether this run's interval (`rows`) and every one of `runs`' overlap,
    and if not, how far their figures spread."""
    verdicts = []
    for r in rows:
        n = str(r["cache_interval"])
        intervals = [(r["speedup"], *r["speedup_ci95"])] + [
            tuple(run["speedups"][n]) for run in runs if n in run["speedups"]
        ]
        if n == "1" or len(intervals) < 2:
            continue
        low = min(g for g, _, _ in intervals)
        high = max(g for g, _, _ in intervals)
        if intervals_overlap(intervals):
            verdicts.append(f"N={n}: the runs' intervals overlap")
        else:
            verdicts.append(
                f"N={n}: the runs' intervals do NOT overlap (their figures span {low} - {high}, "
                f"{(high - low) / low:.2%}): runs differ by more than one run's interval"
            )
    return "; ".join(verdicts)


def write_report(result: dict, out: Path) -> None:
    """step_cache.md from the result (step_cache.json): its `SECTIONS` that are there, in order."""
    lines = [
        "# Step caching (`cache_interval`), CPU (`realiz3d bench cache`)",
        "",
        f"Machine: {describe(result['machine'])}. Code: engines/bench/step_cache.py. F = full step, S = shallow step "
        "(engines/models/deep_cache.py); a step where the schedule switches domains runs full. A section "
        "measured alone (`--section`) names its own machine.",
    ]
    for name, section in SECTIONS.items():
        if name in result:
            figures = result[name]
            machine = [f"Machine: {describe(figures['machine'])}.", ""] if "machine" in figures else []
            title, *body = section.lines(figures)
            lines += ["", title, "", *machine, *body]
    (out / "step_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _shipped_lines(s: dict) -> list[str]:
    return [
        f"## Shipped model ({s['model']}): measured denoise loops",
        f"{s['job']}; {s['rounds']} interleaved rounds; speedup = denoise seconds at N=1 / at N, per round "
        "(a paired ratio); their geometric mean and its 95% bootstrap interval (engines/bench/paired.py), rounds "
        f"added until every interval is narrower than {s.get('interval_goal', INTERVAL_GOAL) * 100:g}% of its speedup or the time budget is "
        "spent (`converged`). Image difference: mean |difference| from N=1 in levels of 255 "
        "(a sanity figure; the quality evaluation is not run).",
        "",
        *_loop_table(s["rows"]),
        *_earlier_lines(s),
    ]


def _onnx_lines(o: dict) -> list[str]:
    return [
        "## Shipped model on ONNX Runtime (backend `onnx`): measured denoise loops",
        "The same job and method as above through the onnx backend: full steps run the full graph (which "
        "also outputs the deep feature), shallow steps the shallow graph (engines/runtime/onnx_export.py); "
        f"{o['rounds']} interleaved rounds.",
        "",
        *_loop_table(o["rows"]),
        *_earlier_lines(o),
    ]


def _batched_lines(b: dict) -> list[str]:
    return [
        f"## Shipped model, batched: {b['jobs']} jobs at once through the step batcher",
        f"4 views, CFG, {STEPS} steps each, max_jobs {b['jobs']}; interleaved rounds after a warm-up round "
        "(which builds every graph: no timed round builds or loads one); jobs/s from the median wall time. "
        "Shallow and full steps batch separately.",
        "",
        "| backend | mix | wall s per round | jobs/s |",
        "|---|---|---|---|",
        *(f"| {r['backend']} | {r['mix']} | {r['wall_s']} | {r['jobs_per_s']} |" for r in b["rows"]),
    ]


def _sd_lines(d: dict) -> list[str]:
    lines = [
        f"## {d['model']}: measured steps, counted loop",
        f"UNet batch {d['unet_batch']} (1 view x CFG); full step {d['full_step_ms']} ms, shallow step "
        f"{d['shallow_step_ms']} ms (medians). {d['method']} Denoise time at N: {STEPS} steps under the "
        "model's default schedule, counted.",
        "",
        "| N | steps | denoise s | speedup | 95% interval | interval width | pairs | converged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        lo, hi = r["speedup_ci95"]
        lines.append(
            f"| {r['cache_interval']} | `{r['step_kinds']}` | {r['denoise_s']} | {r['speedup']} | {lo} - {hi} | "
            f"{r['ci_width_over_speedup']:.2%} | {d['pairs']} | {'yes' if r['converged'] else 'no'} |"
        )
    return lines + _earlier_lines(d)


def _loop_table(rows: list[dict]) -> list[str]:
    """The markdown table of measured denoise loops (`shipped_model`'s rows)."""
    lines = [
        "| N | steps | denoise s (median) | speedup | 95% interval | interval width | converged | mean abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["speedup_ci95"]
        lines.append(
            f"| {r['cache_interval']} | `{r['step_kinds']}` | {r['denoise_s_median']} | {r['speedup']} | "
            f"{lo} - {hi} | {r['ci_width_over_speedup']:.2%} | {'yes' if r['converged'] else 'no'} | "
            f"{r['mean_abs_diff_vs_n1']} |"
        )
    return lines


@dataclass(frozen=True)
class Budget:
    """What a section's timed loops may spend and aim for."""

    max_seconds: float  # each timed loop stops after this long
    goal: float  # or once its intervals are narrower than this fraction of its figures
    engine_cache_dir: Path | None


@dataclass(frozen=True)
class Section:
    measure: Callable[[Budget], dict]  # its figures
    lines: Callable[[dict], list[str]]  # its report from its figures: the title, then the body


#: the report's sections, in its order (`--section NAME` measures one)
SECTIONS: dict[str, Section] = {
    "shipped": Section(lambda b: shipped_model(b.max_seconds, goal=b.goal), _shipped_lines),
    "onnx": Section(
        lambda b: shipped_model(
            b.max_seconds,
            backend="onnx",
            intervals=ONNX_INTERVALS,
            engine_cache_dir=b.engine_cache_dir,
            goal=b.goal,
        ),
        _onnx_lines,
    ),
    "batched": Section(lambda b: batched(b.max_seconds, b.engine_cache_dir), _batched_lines),  # no interval
    "sd": Section(lambda b: sd_shaped(b.max_seconds, goal=b.goal), _sd_lines),
}
