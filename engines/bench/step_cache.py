"""`realiz3d bench cache`: what step caching (`cache_interval`, engines/models/deep_cache.py) saves.

- **Shipped model**: whole denoising loops through the pipeline (4 views, CFG, the model's default
  schedule, 20 steps, one seed), at each cache interval, in interleaved rounds; the denoise stage's seconds
  are compared per round (N=1 / N), until the 95% bootstrap interval of every median ratio is narrower
  than 1% of it or the time budget runs out. The images' mean absolute difference from N=1 (levels of
  255) is reported beside: a sanity figure, not the quality evaluation.
- **Shipped model on ONNX Runtime**: the same loops through the `onnx` backend (the full graph, which also
  outputs the deep feature, and the shallow graph: engines/runtime/onnx_export.py) at N = 1 and 3.
  `realiz3d bench cache --section onnx` measures only this and merges it into the existing report.
- **SD-1.x-shaped UNet** (engines/bench/sd_like.py, 64x64 latents, one view x CFG): a full step and a
  shallow step timed interleaved; the denoise time at each N is the count of full and shallow steps that
  `DenoiseJob.step_kind` plans for 20 steps under the same schedule, times those step times (a loop of
  that model takes minutes per interval on a 2-core CPU). Its interval comes from resampling the steps.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from engines.bench import OUT_DIR
from engines.bench.machine import describe, torch_machine

INTERVALS = (1, 2, 3, 5)
#: the ONNX Runtime loops: full compute against the interval the issue's goal names
ONNX_INTERVALS = (1, 3)
STEPS = 20


def _ci(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the median."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return meds[int(0.025 * rounds)], meds[int(0.975 * rounds) - 1]


def step_kinds(schedule, steps: int, interval: int) -> str:  # noqa: ANN001 - a DomainSchedule
    """The kinds the engine plans for one job: "F"ull and "S"hallow, in order."""
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
    min_rounds: int = 5,
    max_rounds: int = 200,
    backend: str = "torch",
    intervals: tuple[int, ...] = INTERVALS,
    engine_cache_dir: str | Path | None = None,
) -> dict:
    """Denoise loops at each of `intervals` (the first is 1) through a `backend` pipeline."""
    from engines.pipelines import Realiz3DPipeline
    from engines.requests import MultiviewRequest

    pipe = Realiz3DPipeline.load(device="cpu", backend=backend, engine_cache_dir=engine_cache_dir)
    schedule = pipe.config.default_schedule

    def request(n: int) -> MultiviewRequest:
        return MultiviewRequest(prompt="a red chair", num_views=4, steps=STEPS, seed=7, cache_interval=n)

    images = {n: np.stack(pipe.multiview(request(n)).images).astype(float) for n in intervals}  # warm-up
    seconds: dict[int, list[float]] = {n: [] for n in intervals}
    start = time.monotonic()
    rounds = 0
    while rounds < max_rounds:
        for n in intervals:  # interleaved: drift and other load hit every interval alike
            seconds[n].append(pipe.multiview(request(n)).timings["denoise"])
        rounds += 1
        if rounds < min_rounds:
            continue
        ratios = {n: [a / b for a, b in zip(seconds[1], seconds[n], strict=True)] for n in intervals[1:]}
        narrow = all((hi - lo) < 0.01 * statistics.median(r) for r in ratios.values() for lo, hi in [_ci(r)])
        if narrow or time.monotonic() - start > max_seconds:
            break
    rows = []
    for n in intervals:
        r = [a / b for a, b in zip(seconds[1], seconds[n], strict=True)]
        lo, hi = _ci(r)
        rows.append(
            {
                "cache_interval": n,
                "step_kinds": step_kinds(schedule, STEPS, n),
                "denoise_s_median": round(statistics.median(seconds[n]), 4),
                "speedup_median": round(statistics.median(r), 4),
                "speedup_ci95": [round(lo, 4), round(hi, 4)],
                "ci_width_over_median": round((hi - lo) / statistics.median(r), 4),
                "mean_abs_diff_vs_n1": round(float(np.abs(images[n] - images[1]).mean()), 3),
            }
        )
    return {
        "model": pipe.config.name,
        "backend": backend,
        "job": f"4 views, CFG, {STEPS} steps, schedule {schedule.model_dump(exclude_defaults=True)}, seed 7",
        "rounds": rounds,
        "rows": rows,
    }


def batched_throughput(rounds: int = 3, jobs: int = 8) -> dict:
    """Jobs/s of a batching pipeline (max_jobs = `jobs`, all submitted at once, 4 views, CFG, 20 steps):
    every job at N=1, a mix of N=1,2,3,5, every job at N=3; interleaved rounds, median wall time."""
    from concurrent.futures import ThreadPoolExecutor

    from engines.pipelines import Realiz3DPipeline
    from engines.requests import MultiviewRequest

    pipe = Realiz3DPipeline.load(device="cpu")
    pipe.enable_batching(max_jobs=jobs, max_wait_ms=2000, threads=torch.get_num_threads())
    mixes = {
        "all N=1": [1] * jobs,
        "mixed N=1,2,3,5": [INTERVALS[i % 4] for i in range(jobs)],
        "all N=3": [3] * jobs,
    }
    seconds: dict[str, list[float]] = {k: [] for k in mixes}
    try:
        with ThreadPoolExecutor(jobs) as pool:
            for r in range(rounds + 1):  # the first round warms up
                for name, intervals in mixes.items():
                    reqs = [
                        MultiviewRequest(
                            prompt=f"object {i}", num_views=4, steps=STEPS, seed=i, cache_interval=n
                        )
                        for i, n in enumerate(intervals)
                    ]
                    t0 = time.perf_counter()
                    list(pool.map(pipe.multiview, reqs))
                    if r:
                        seconds[name].append(time.perf_counter() - t0)
    finally:
        pipe.batcher.close()
    return {
        "jobs": jobs,
        "rounds": rounds,
        "rows": [
            {
                "mix": k,
                "wall_s": [round(t, 3) for t in v],
                "jobs_per_s": round(jobs / statistics.median(v), 3),
            }
            for k, v in seconds.items()
        ],
    }


@torch.no_grad()
def sd_shaped(repeats: int) -> dict:
    from engines.bench.sd_like import sd_like_model
    from engines.bench.unet import unet_inputs
    from engines.runtime.torch_runner import TorchRunner
    from engines.types import uniform_combo

    model = sd_like_model()
    model.eval()
    runner = TorchRunner(model)
    runner.prepare([])
    x = unet_inputs(model, views=1, objects=1)
    combos = [uniform_combo("real")] * x.batch
    _, deep = runner.run_step(x, combos)
    fns = {"full": lambda: runner(x, combos), "shallow": lambda: runner.run_step(x, combos, deep)}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    schedule = model.config.default_schedule
    rng = random.Random(0)
    rows = []
    for n in INTERVALS:
        kinds = step_kinds(schedule, STEPS, n)
        nf, ns = kinds.count("F"), kinds.count("S")
        ratios = []
        for _ in range(2000):  # resample the measured steps
            f = statistics.median(rng.choices(times["full"], k=len(times["full"])))
            s = statistics.median(rng.choices(times["shallow"], k=len(times["shallow"])))
            ratios.append(STEPS * f / (nf * f + ns * s))
        ratios.sort()
        f, s = statistics.median(times["full"]), statistics.median(times["shallow"])
        rows.append(
            {
                "cache_interval": n,
                "step_kinds": kinds,
                "denoise_s": round(nf * f + ns * s, 2),
                "speedup": round(STEPS * f / (nf * f + ns * s), 4),
                "speedup_ci95": [round(ratios[50], 4), round(ratios[1949], 4)],
            }
        )
    return {
        "model": f"seeded SD-1.x-shaped UNet (engines/bench/sd_like.py), 64x64 latents, "
        f"{model.parameter_count():,} parameters",
        "unet_batch": x.batch,
        "full_step_ms": [round(t * 1e3, 1) for t in times["full"]],
        "shallow_step_ms": [round(t * 1e3, 1) for t in times["shallow"]],
        "rows": rows,
    }


def onnx_runtime(max_seconds: float, engine_cache_dir: str | Path | None = None) -> dict:
    """The shipped model's loops on ONNX Runtime at `ONNX_INTERVALS`, with the machine they ran on."""
    return {
        "machine": torch_machine(),
        **shipped_model(
            max_seconds, backend="onnx", intervals=ONNX_INTERVALS, engine_cache_dir=engine_cache_dir
        ),
    }


def run_step_cache_bench(
    out_dir: str | Path = OUT_DIR,
    max_seconds: float = 300.0,
    sd_repeats: int = 4,
    sd: bool = True,
    section: str | None = None,
    engine_cache_dir: str | Path | None = None,
) -> dict:
    """Writes step_cache.json and step_cache.md. `section="onnx"`: measure only the ONNX Runtime loops and
    merge them into the step_cache.json already in `out_dir` (the other sections keep their figures)."""
    out = Path(out_dir)
    if section == "onnx":
        if not (out / "step_cache.json").is_file():
            from engines.errors import UserInputError

            raise UserInputError(
                f"--section onnx merges into {out / 'step_cache.json'}, which is not there: "
                "run `realiz3d bench cache` first"
            )
        result = json.loads((out / "step_cache.json").read_text())
        result["onnx"] = onnx_runtime(max_seconds, engine_cache_dir)
        (out / "step_cache.json").write_text(json.dumps(result, indent=2))
        write_report(result, out)
        return result
    if section is not None:
        raise ValueError(f"bench cache: unknown section {section!r} (onnx)")
    result = {
        "machine": torch_machine(),
        "shipped": shipped_model(max_seconds),
        "onnx": onnx_runtime(max_seconds, engine_cache_dir),
        "batched": batched_throughput(),
    }
    if sd:
        result["sd"] = sd_shaped(sd_repeats)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_cache.json").write_text(json.dumps(result, indent=2))
    write_report(result, out)
    return result


def write_report(result: dict, out: Path) -> None:
    """step_cache.md from the result (step_cache.json)."""
    sd = "sd" in result
    s = result["shipped"]
    lines = [
        "# Step caching (`cache_interval`), CPU (`realiz3d bench cache`)",
        "",
        f"Machine: {describe(result['machine'])}. Code: engines/bench/step_cache.py. F = full step, S = shallow step "
        "(engines/models/deep_cache.py); a step where the schedule switches domains runs full.",
        "",
        f"## Shipped model ({s['model']}): measured denoise loops",
        "",
        f"{s['job']}; {s['rounds']} interleaved rounds; speedup = denoise seconds at N=1 / at N, per round; "
        "median and 95% bootstrap interval. Image difference: mean |difference| from N=1 in levels of 255 "
        "(a sanity figure; the quality evaluation is not run).",
        "",
        *_loop_table(s["rows"]),
    ]
    if "onnx" in result:
        o = result["onnx"]
        lines += [
            "",
            "## Shipped model on ONNX Runtime (backend `onnx`): measured denoise loops",
            "",
            f"Machine: {describe(o['machine'])}. The same job and method as above through the onnx backend: "
            "full steps run the full graph (which also outputs the deep feature), shallow steps the shallow "
            f"graph (engines/runtime/onnx_export.py); {o['rounds']} interleaved rounds.",
            "",
            *_loop_table(o["rows"]),
        ]
    b = result["batched"]
    lines += [
        "",
        f"## Shipped model, batched: {b['jobs']} jobs at once through the step batcher",
        "",
        f"4 views, CFG, {STEPS} steps each, max_jobs {b['jobs']}; {b['rounds']} interleaved rounds after a "
        "warm-up round; jobs/s from the median wall time. Shallow and full steps batch separately.",
        "",
        "| mix | wall s per round | jobs/s |",
        "|---|---|---|",
    ]
    lines += [f"| {r['mix']} | {r['wall_s']} | {r['jobs_per_s']} |" for r in b["rows"]]
    if sd:
        d = result["sd"]
        lines += [
            "",
            f"## {d['model']}: measured steps, counted loop",
            "",
            f"UNet batch {d['unet_batch']} (1 view x CFG). Full steps (ms): {d['full_step_ms']}; shallow steps "
            f"(ms): {d['shallow_step_ms']} (interleaved). Denoise time at N = full steps x median full step + "
            f"shallow steps x median shallow step, for {STEPS} steps under the model's default schedule; the "
            "interval resamples the measured steps.",
            "",
            "| N | steps | denoise s | speedup | 95% interval |",
            "|---|---|---|---|---|",
        ]
        for r in d["rows"]:
            lo, hi = r["speedup_ci95"]
            lines.append(
                f"| {r['cache_interval']} | `{r['step_kinds']}` | {r['denoise_s']} | {r['speedup']} | {lo} - {hi} |"
            )
    (out / "step_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _loop_table(rows: list[dict]) -> list[str]:
    """The markdown table of measured denoise loops (`shipped_model`'s rows)."""
    lines = [
        "| N | steps | denoise s (median) | speedup | 95% interval | interval width | mean abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["speedup_ci95"]
        lines.append(
            f"| {r['cache_interval']} | `{r['step_kinds']}` | {r['denoise_s_median']} | {r['speedup_median']} | "
            f"{lo} - {hi} | {r['ci_width_over_median']:.2%} | {r['mean_abs_diff_vs_n1']} |"
        )
    return lines
