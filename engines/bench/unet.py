"""`realiz3d bench unet`, part 1: what the Domain Shifter costs at run time.

Measured in one run on the embedded default model (4 views, CFG: a UNet batch of 8). The baseline of
every ratio is the **bare UNet**: the same weights loaded again with the Domain Shifter removed (no
hooks at all), interleaved with the measured variant, medians.
- fused block-shift step (the model's form: offset-table lookups with per-sample domain ids) / bare;
- the lora form on the same UNet (fused weight sets, reference swap) / bare, for comparison;
- domain switch / step: block-shift builds the next call's domain-id tensor; lora swaps references;
- extra bytes for all domains (block-shift: the offset tables; lora: one weight set per domain);
- compiled graphs a mixed workload needs (real, synthetic, 0.4, 0.4+blocks=6, one batch mixing them),
  counted as ONNX graphs exported into a fresh engine cache, per form;
- UNet FLOP/s / measured fp32 matmul peak; the model's 4-view, 30-step generation time.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from engines.bench import OUT_DIR
from engines.bench.machine import describe, describe_conditions, run_conditions, torch_machine
from engines.bench.paired import (
    MIN_PAIRS,
    intervals_overlap,
    narrower_than,
    paired_ratio,
    pairs_sentence,
    per_run,
    split_runs,
)
from engines.errors import UserInputError
from engines.pipelines import Realiz3DPipeline
from engines.requests import MultiviewRequest
from engines.runtime.torch_runner import cast_inputs
from engines.sampling.cameras import camera_embeddings, orbit_cameras
from engines.types import DomainCombo, DomainSchedule, UNetInputs, uniform_combo

REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")
MIXED_SCHEDULES = ("real", "synthetic", "0.4", "0.4,blocks=6")


def matmul_peak_gflops(size: int = 1024, repeats: int = 30) -> float:
    """Best-of fp32 matmul throughput: the machine's practical peak for dense math."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def unet_inputs(model, views: int, objects: int) -> UNetInputs:
    """One UNet call's inputs for `objects` objects of `views` views with CFG (2 x views rows each)."""
    cfg = model.config
    n = 2 * views * objects  # classifier-free guidance doubles the batch
    size = cfg.resolution // cfg.downsample_factor * cfg.patch_size
    gen = torch.Generator().manual_seed(0)
    return UNetInputs(
        sample=torch.randn(n, cfg.image_channels, size, size, generator=gen),
        timestep=torch.full((n,), 500, dtype=torch.long),
        text=model.text_encoder.encode(["a red cube"]).expand(n, -1, -1).contiguous(),
        cameras=torch.from_numpy(camera_embeddings(orbit_cameras(views))).repeat(2 * objects, 1),
        geometry=None,
        num_views=views,
    )


@torch.no_grad()
def batch_scaling(
    views: int,
    objects: list[int],
    repeats: int = 7,
    model_dir: str | Path | None = None,
    device: str = "cpu",
) -> dict[int, float]:
    """UNet milliseconds per image at each batch of `objects` CFG objects (fused real weights, eager).

    Repetitions are interleaved across batch sizes and the median kept. per-image(1) / per-image(k) is
    the most that batching k jobs' steps together can speed up a UNet-bound worker on `device`.
    """
    pipe = Realiz3DPipeline.load(model_dir, device=device)
    model = pipe.model
    calls = {k: cast_inputs(unet_inputs(model, views, k), model.device, model.dtype) for k in objects}

    def call(x: UNetInputs) -> None:
        pipe.runner(x, REAL)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)  # time the kernels, not their launch

    for x in calls.values():
        call(x)
    times: dict[int, list[float]] = {k: [] for k in objects}
    for _ in range(repeats):
        for k, x in calls.items():
            times[k] += _timed(lambda x=x: call(x), 1)
    return {k: round(statistics.median(t) * 1e3 / calls[k].batch, 3) for k, t in times.items()}


def bare_unet(model_dir: str | Path | None):
    """The model's UNet loaded again with its Domain Shifter removed: the honest baseline."""
    from engines.models.default_model import default_model_dir
    from engines.models.model_folder import load_model

    bare = load_model(model_dir if model_dir is not None else default_model_dir())
    bare.shifter.remove()
    bare.unet.attach_domain_context(None)
    return bare


def lora_twin(model_dir: str | Path | None):
    """The same UNet weights with a lora-form shifter (random domain vectors), for the form comparison."""
    from engines.models.default_model import randomize_shifter
    from engines.models.domain_shifter import build_domain_shifter
    from engines.models.shifter_config import LoraShifterConfig

    model = bare_unet(model_dir)
    model.shifter = build_domain_shifter(LoraShifterConfig(), model.unet.unet)
    model.shifter_config = model.shifter.config
    model.unet.attach_domain_context(model.shifter.context)
    randomize_shifter(model.shifter, 1.0)
    return model.eval()


def count_graphs(model, cache_dir: Path, views: int) -> int:
    """ONNX graphs exported for the mixed workload (each schedule, then one batch mixing them)."""
    from engines.runtime.onnx_runner import OnnxRunner

    runner = OnnxRunner(model, cache_dir=cache_dir, num_views=views)
    combos = sorted({c for s in MIXED_SCHEDULES for c in DomainSchedule.parse(s).combos(10)})
    runner.prepare(combos)
    x = unet_inputs(model, views, objects=len(combos))
    runner(x, [c for c in combos for _ in range(2 * views)])  # one batch mixing every combo
    return len(list(cache_dir.rglob("unet.onnx")))


def _interleaved(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved so drift and other load hit every variant alike
        for k, fn in fns.items():
            times[k] += _timed(fn, 1)
    return {k: statistics.median(t) * 1e3 for k, t in times.items()}


@torch.no_grad()
def run_unet_bench(
    out_dir: str | Path = OUT_DIR,
    repeats: int = 40,
    gen_steps: int = 30,
    model_dir: str | Path | None = None,
    name: str = "unet",
) -> dict:
    """Measure on `model_dir` (None = the embedded default); write `<name>.json` and `<name>.md`."""
    import tempfile

    from engines.runtime.torch_runner import TorchRunner

    pipe = Realiz3DPipeline.load(model_dir, device="cpu")
    model = pipe.model
    shifter = model.shifter
    cfg = model.config
    views = 4
    inputs = unet_inputs(model, views, objects=1)
    n = inputs.batch
    bare = bare_unet(model_dir)
    bare_again = bare_unet(model_dir)  # a second bare copy: the noise floor of every ratio below
    lora = lora_twin(model_dir)
    fused = TorchRunner(model, "fused")
    fused.prepare([REAL, SYN])
    lora.shifter.activate(REAL)
    shifter.activate()
    mixed = [SYN] * (n // 2) + [DomainCombo("real", "real", "real", min(6, shifter.num_sites))] * (n // 2)
    # The UNet call as a compiled graph sees it: domain ids are an input, made once per call below.
    ids_real, ids_mixed = shifter.domain_ids([REAL] * n), shifter.domain_ids(mixed)
    ms = _interleaved(
        {
            "bare": lambda: bare.unet.run(inputs),
            "bare_again": lambda: bare_again.unet.run(inputs),
            "fused": lambda: model.unet.run(inputs, ids_real),
            "fused_mixed": lambda: model.unet.run(inputs, ids_mixed),
            "lora_fused": lambda: lora.unet.run(inputs),
            "runner": lambda: fused(inputs, REAL),  # + the runner's per-call work (ids, casts)
        },
        repeats,
    )

    switches = 2000
    t0 = time.perf_counter()
    for i in range(switches):  # what changes per call when the domain changes: the id tensor
        shifter.domain_ids([SYN if i % 2 == 0 else REAL] * n)
    switch_ms = (time.perf_counter() - t0) / switches * 1e3
    t0 = time.perf_counter()
    for i in range(switches):
        lora.shifter.activate(SYN if i % 2 == 0 else REAL)
    lora_switch_ms = (time.perf_counter() - t0) / switches * 1e3

    # The same pair compiled (static shapes, as CompileRunner serves): Inductor may fuse each site's
    # add into the op that follows, which eager cannot.
    args = (inputs.sample, inputs.timestep, inputs.text, inputs.cameras, inputs.geometry)
    bare_c = torch.compile(bare.unet, dynamic=False)
    fused_c = torch.compile(model.unet, dynamic=False)
    ms_c = _interleaved(
        {
            "bare": lambda: bare_c(*args, None, inputs.num_views),
            "fused": lambda: fused_c(*args, ids_real, inputs.num_views),
        },
        repeats,
    )

    flops = FlopCounterMode(display=False)
    with flops:
        bare.unet.run(inputs)
    gflop = flops.get_total_flops() / 1e9
    peak = matmul_peak_gflops()
    achieved = gflop / (ms["fused"] / 1e3)

    shifter.invalidate_fused()
    table_bytes = shifter.fused_bytes()
    lora.shifter.invalidate_fused()
    lora.shifter.fuse()
    lora_bytes = lora.shifter.fused_bytes()
    unet_bytes = sum(p.numel() * p.element_size() for p in model.unet.parameters())
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        graphs = {
            "block-shift": count_graphs(model, Path(a), views),
            "lora": count_graphs(lora, Path(b), views),
        }

    request = MultiviewRequest(prompt="a red cube", num_views=4, steps=gen_steps, seed=0)
    pipe.multiview(MultiviewRequest(prompt="warm", num_views=4, steps=2, seed=0))
    gen_s = [pipe.multiview(request).timings["total"] for _ in range(2)]

    result = {
        "machine": torch_machine(),
        "model": {
            "name": cfg.name,
            "resolution": cfg.resolution,
            "unet_parameters": sum(p.numel() for p in model.unet.parameters()),
            "shifter_form": shifter.form,
            "block_sites": shifter.num_sites,
            "shifter_rank": shifter.config.rank,
        },
        "unet_batch": n,
        "bare_step_ms": round(ms["bare"], 3),
        "bare_again_over_bare": round(ms["bare_again"] / ms["bare"], 4),
        "fused_step_ms": round(ms["fused"], 3),
        "fused_over_bare": round(ms["fused"] / ms["bare"], 4),
        "fused_mixed_step_ms": round(ms["fused_mixed"], 3),
        "fused_mixed_over_bare": round(ms["fused_mixed"] / ms["bare"], 4),
        "lora_fused_step_ms": round(ms["lora_fused"], 3),
        "lora_fused_over_bare": round(ms["lora_fused"] / ms["bare"], 4),
        "compiled_bare_step_ms": round(ms_c["bare"], 3),
        "compiled_fused_over_bare": round(ms_c["fused"] / ms_c["bare"], 4),
        "runner_step_ms": round(ms["runner"], 3),
        "runner_over_bare": round(ms["runner"] / ms["bare"], 4),
        "domain_switch_ms": round(switch_ms, 4),
        "switch_over_step": round(switch_ms / ms["fused"], 5),
        "lora_switch_ms": round(lora_switch_ms, 4),
        "unet_gflop_per_step": round(gflop, 2),
        "achieved_gflops": round(achieved, 1),
        "matmul_peak_gflops": round(peak, 1),
        "flops_over_peak": round(achieved / peak, 3),
        "unet_weight_bytes": unet_bytes,
        "extra_bytes_all_domains": table_bytes,
        "lora_extra_bytes_all_domains": lora_bytes,
        "graphs_for_mixed_workload": graphs,
        "default_4view_30step_seconds": [round(s, 2) for s in gen_s],
        "goals": {
            "fused_over_bare": "<= 1.01",
            "switch_over_step": "<= 0.01",
            "flops_over_peak": ">= 0.4",
            "default_4view_30step_seconds": "<= 10",
        },
    }
    write_report(result, Path(out_dir), name)
    return result


def write_report(result: dict, out_dir: Path, name: str = "unet") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    r = result
    g = r["graphs_for_mixed_workload"]
    lines = [
        "# UNet step: Domain Shifter cost (`realiz3d bench unet`)",
        "",
        f"Machine: {describe(r['machine'])}. Model: {r['model']}. UNet batch {r['unet_batch']} (4 views x CFG). "
        "Baseline: the bare UNet (same weights, shifter removed, no hooks), interleaved in the same run.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| bare UNet step | {r['bare_step_ms']} ms | |",
        f"| a second bare copy / bare (the noise floor of these ratios) | {r.get('bare_again_over_bare')} | |",
        f"| fused block-shift step | {r['fused_step_ms']} ms | |",
        f"| fused block-shift / bare | {r['fused_over_bare']} | <= 1.01 |",
        f"| fused block-shift, batch mixing two schedules / bare | {r['fused_mixed_over_bare']} | |",
        f"| fused lora (same UNet) / bare | {r['lora_fused_over_bare']} | |",
        f"| through TorchRunner (ids built, inputs cast per call) / bare | {r.get('runner_over_bare')} | |",
        f"| compiled (torch.compile, static shapes): bare step | {r.get('compiled_bare_step_ms')} ms | |",
        f"| compiled fused block-shift / compiled bare | {r.get('compiled_fused_over_bare')} | <= 1.01 |",
        f"| domain switch (block-shift: new domain-id tensor) | {r['domain_switch_ms']} ms | |",
        f"| switch / step | {r['switch_over_step']} | <= 0.01 |",
        f"| lora domain switch (reference swap) | {r['lora_switch_ms']} ms | |",
        f"| extra bytes, all domains (block-shift offset tables) | {r['extra_bytes_all_domains']} B | |",
        f"| extra bytes, all domains (lora fused weight sets) | {r['lora_extra_bytes_all_domains']} B | |",
        f"| ONNX graphs for the mixed workload (block-shift / lora) | {g['block-shift']} / {g['lora']} | |",
        f"| UNet GFLOP per step | {r['unet_gflop_per_step']} | |",
        f"| achieved GFLOP/s | {r['achieved_gflops']} | |",
        f"| fp32 matmul peak GFLOP/s | {r['matmul_peak_gflops']} | |",
        f"| FLOP/s / peak | {r['flops_over_peak']} | >= 0.4 |",
        f"| UNet weights | {r['unet_weight_bytes'] / 1e6:.2f} MB | |",
        f"| this model, 4 views, 30 steps | {r['default_4view_30step_seconds']} s | <= 10 s |",
        "",
    ]
    (out_dir / f"{name}.md").write_text("\n".join(lines))


@torch.no_grad()
def shifter_cost(
    build,
    views: int = 1,
    width: float = 0.01,
    max_minutes: float = 15.0,
    min_pairs: int = MIN_PAIRS,
    prior: Callable[[dict], Sequence[float]] = lambda setup: (),
) -> dict:
    """Fused block-shift step / bare UNet step on a model `build()` makes (called twice: the same seed
    gives the same weights; the second copy has its shifter removed), timed in alternating pairs until the
    ratio's 95% interval is narrower than `width` or `max_minutes` have passed (engines/bench/paired.py).
    `prior(setup)`: earlier runs' pair ratios to count with this run's, given what was built (the
    `RESUME_SETUP_KEYS` of the result), before anything is timed; it raises where they do not match."""
    model, bare = build(), build()
    bare.shifter.remove()
    bare.unet.attach_domain_context(None)
    inputs = unet_inputs(model, views, objects=1)
    shifter = model.shifter
    shifter.fuse()
    shifter.activate()
    ids = shifter.domain_ids([REAL] * inputs.batch)
    setup = {
        "unet_batch": inputs.batch,
        "block_sites": shifter.num_sites,
        "parameters": model.parameter_count(),
        "extra_bytes_all_domains": shifter.fused_bytes(),
    }
    earlier = list(prior(setup))
    r = paired_ratio(
        lambda: bare.unet.run(inputs),
        lambda: model.unet.run(inputs, ids),
        known=narrower_than(width),
        min_pairs=min_pairs,
        max_seconds=max_minutes * 60,
        prior=earlier,
        progress=lambda line: print(f"shifter cost: {line}", flush=True),
    )
    return {
        **setup,
        "bare_step_ms": round(r.baseline_ms, 1),
        "fused_step_ms": round(r.variant_ms, 1),
        "fused_over_bare": round(r.ratio, 4),
        "fused_over_bare_interval": [round(r.low, 4), round(r.high, 4)],
        "interval_width_goal": width,
        "interval_converged": r.converged,
        "pairs": r.pairs,
        "pairs_this_run": r.pairs - len(earlier),
        "pair_ratios": [round(x, 5) for x in r.ratios],
    }


#: what must match for `--resume` to pool a report's pairs with a new run's: the model as built and the
#: machine's threading (the ratio depends on both); the load average and the goal may differ
RESUME_SETUP_KEYS = ("unet_batch", "block_sites", "parameters", "extra_bytes_all_domains")
RESUME_MACHINE_KEYS = ("cpu", "cores", "usable_cores", "OMP_NUM_THREADS", "python", "torch", "threads")
SD_MODEL = "seeded SD-1.x-shaped UNet (engines/bench/sd_like.py), 64x64 latents"


def resumable_pairs(previous: dict, machine: dict, setup: dict | None = None) -> list[float]:
    """The pair ratios of `previous` (an unet_sd_cpu.json) to pool with a run on `machine` whose model
    built as `setup` (not checked while None); a `UserInputError` naming what differs when they were not
    measured alike."""
    differ = [
        f"machine.{k}" for k in RESUME_MACHINE_KEYS if previous.get("machine", {}).get(k) != machine.get(k)
    ]
    was_on = previous.get("machine", {}).get("cpu_model")  # None: a report from before it was recorded
    if was_on and was_on != machine.get("cpu_model"):
        differ.append(f"CPU model: {was_on}, now {machine.get('cpu_model')}")
    if previous.get("model") != SD_MODEL:
        differ.append("model")
    differ += [k for k in RESUME_SETUP_KEYS if setup is not None and previous.get(k) != setup[k]]
    if "pair_ratios" not in previous:
        differ.append("pair_ratios (the report predates them)")
    if differ:
        raise UserInputError(
            "--resume: the report was not measured like this run ("
            + ", ".join(differ)
            + "); run without --resume to start a new one"
        )
    return list(previous["pair_ratios"])


def run_sd_shifter_cost(
    out_dir: str | Path = OUT_DIR,
    views: int = 1,
    width: float = 0.01,
    max_minutes: float = 15.0,
    resume: bool = False,
    build=None,
) -> dict:
    """`realiz3d bench unet --shape sd` on the CPU: the block-shift cost at SD 1.x shapes (seeded weights,
    64x64 latents, 38 sites), its interval `width` wide or `max_minutes` spent; writes unet_sd_cpu.json and
    unet_sd_cpu.md. `resume`: pool this run's pairs with those of the report already in `out_dir` (same
    model, same machine threading and CPU model, else a `UserInputError` before anything is timed), so runs in separate
    quiet windows add up to one interval; the report lists every run."""
    from engines.bench.sd_like import sd_like_model

    report = Path(out_dir) / "unet_sd_cpu.json"
    machine = torch_machine()
    previous = json.loads(report.read_text()) if resume and report.is_file() else None
    if previous is not None:
        resumable_pairs(previous, machine)  # fail before the (minutes-long) build where it cannot match
    result = {
        "machine": machine,
        "model": SD_MODEL,
        **shifter_cost(
            build or sd_like_model,
            views,
            width,
            max_minutes,
            prior=lambda setup: resumable_pairs(previous, machine, setup) if previous is not None else (),
        ),
    }
    earlier_runs = []
    if previous is not None:
        earlier_runs = previous.get("runs") or [
            {"pairs": previous["pairs"], **run_conditions(previous["machine"])}
        ]
    result["runs"] = earlier_runs + [
        {
            "pairs": result.pop("pairs_this_run"),
            **run_conditions(result["machine"]),
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    ]
    print("\n".join(write_sd_report(result, Path(out_dir))))
    return result


def runs_sentence(runs: list[dict], pair_ratios: Sequence[float] = ()) -> str:
    """How the pairs split over runs pooled with `--resume`, each run's own ratio and interval, and
    whether those intervals overlap (nothing for one run). A run of fewer than `MIN_PAIRS` pairs (a
    resumed run stopped at once) has no interval worth the name: it is listed, but not judged."""
    if len(runs) < 2:
        return ""
    sizes = [r["pairs"] for r in runs]
    own = per_run(pair_ratios, sizes)
    each = []
    for r, (ratio, low, high), pairs in zip(runs, own, split_runs(pair_ratios, sizes), strict=True):
        load = describe_conditions(r, unrecorded="")
        count = f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''}"
        if len(pairs) < MIN_PAIRS:
            each.append(f"{count} reading {ratio:.4f} (under {MIN_PAIRS}: no interval of its own){load}")
            continue
        spread = statistics.stdev(math.log(x) for x in pairs)
        each.append(
            f"{count} reading {ratio:.4f} [{low:.4f}, {high:.4f}], "
            f"per-pair spread (sd of the log ratio) {spread:.1%}{load}"
        )
    judged = [interval for interval, size in zip(own, sizes, strict=True) if size >= MIN_PAIRS]
    if len(judged) < 2:
        agree = f"fewer than two runs have {MIN_PAIRS} pairs, so whether the runs agree is not judged"
    elif intervals_overlap(judged):
        agree = "the runs' own intervals overlap: no sign that they measured different things"
    else:
        agree = (
            "the runs' own intervals do NOT overlap: the runs differ by more than their noise, and the pooled "
            "interval understates the uncertainty"
        )
    left_out = len(own) - len(judged)
    if left_out and len(judged) >= 2:
        agree += f" (the {left_out} run(s) under {MIN_PAIRS} pairs left out of that verdict)"
    return (
        f" The pairs come from {len(runs)} runs pooled with `--resume` (same model, same threading): "
        f"{'; '.join(each)}. The step medians are the last run's; {agree}."
    )


def write_sd_report(result: dict, out_dir: Path) -> list[str]:
    """unet_sd_cpu.json and .md from `run_sd_shifter_cost`'s result; the markdown's lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "unet_sd_cpu.json").write_text(json.dumps(result, indent=2))
    r = result
    views = r["unet_batch"] // 2  # views x CFG
    low, high = r["fused_over_bare_interval"]
    lines = [
        "# Domain Shifter cost at SD 1.x shapes, CPU (`realiz3d bench unet --shape sd`)",
        "",
        f"Machine: {describe(r['machine'])}. Model: {r['model']}, {r['parameters']:,} parameters, {r['block_sites']} "
        f"block-shift sites, UNet batch {r['unet_batch']} ({views} view(s) x CFG). Baseline: the same weights "
        f"built again with the shifter removed. {pairs_sentence(r['pairs'], r['interval_converged'], 'bare', 'fused')}"
        + runs_sentence(r.get("runs", []), r.get("pair_ratios", ())),
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| bare UNet step (median) | {r['bare_step_ms']} ms | |",
        f"| fused block-shift step (median) | {r['fused_step_ms']} ms | |",
        f"| fused block-shift / bare | {r['fused_over_bare']} | <= 1.01 |",
        f"| its 95% interval | {low} - {high} (width {high - low:.4f}) | narrower than {r['interval_width_goal']} |",
        f"| extra bytes, all domains (offset tables) | {r['extra_bytes_all_domains']} B | |",
    ]
    (out_dir / "unet_sd_cpu.md").write_text("\n".join(lines) + "\n")
    return lines
