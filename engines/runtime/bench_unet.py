"""`realiz3d bench unet`, part 1: what the Domain Shifter costs at run time (issue 2's numbers).

Measured in one run on the embedded default model (4 views, CFG: a UNet batch of 8):
- fused-adapter step time / bare base UNet step time (goal <= 1.01): interleaved repetitions, medians;
- domain-switch cost / one step (goal <= 0.01);
- UNet FLOP/s / measured fp32 matmul peak of this machine (goal >= 0.4);
- extra memory per fused weight set (should be the adapted layers' bytes only);
- the default model's 4-view, 30-step generation time (goal <= 10 s on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from engines.pipelines import Realiz3DPipeline
from engines.requests import MultiviewRequest
from engines.runtime.torch_runner import cast_inputs
from engines.sampling.cameras import camera_embeddings, orbit_cameras
from engines.types import UNetInputs

REAL, SYN = ("real",) * 3, ("synthetic",) * 3


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
    model.shifter.fuse()
    model.shifter.activate(REAL)
    calls = {k: cast_inputs(unet_inputs(model, views, k), model.device, model.dtype) for k in objects}

    def call(x: UNetInputs) -> None:
        model.unet.run(x)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)  # time the kernels, not their launch

    for x in calls.values():
        call(x)
    times: dict[int, list[float]] = {k: [] for k in objects}
    for _ in range(repeats):
        for k, x in calls.items():
            times[k] += _timed(lambda x=x: call(x), 1)
    return {k: round(statistics.median(t) * 1e3 / calls[k].batch, 3) for k, t in times.items()}


@torch.no_grad()
def run_unet_bench(
    out_dir: str | Path = "docs/benchmarks",
    repeats: int = 15,
    gen_steps: int = 30,
    model_dir: str | Path | None = None,
    name: str = "unet",
) -> dict:
    """Measure on `model_dir` (None = the embedded default); write `<name>.json` and `<name>.md`."""
    pipe = Realiz3DPipeline.load(model_dir, device="cpu")
    model = pipe.model
    shifter = model.shifter
    cfg = model.config
    views = 4
    inputs = unet_inputs(model, views, objects=1)
    n = inputs.batch
    shifter.fuse()

    def base_step():
        shifter.deactivate()
        model.unet.run(inputs)

    def fused_step():
        shifter.activate(REAL)
        model.unet.run(inputs)

    for _ in range(3):
        base_step()
        fused_step()
    base_t, fused_t = [], []
    for _ in range(repeats):  # interleaved so drift and other load hit both alike
        base_t += _timed(base_step, 1)
        fused_t += _timed(fused_step, 1)
    base_ms = statistics.median(base_t) * 1e3
    fused_ms = statistics.median(fused_t) * 1e3

    switches = 2000
    t0 = time.perf_counter()
    for i in range(switches):
        shifter.activate(SYN if i % 2 == 0 else REAL)
    switch_ms = (time.perf_counter() - t0) / switches * 1e3

    flops = FlopCounterMode(display=False)
    shifter.activate(REAL)
    with flops:
        model.unet.run(inputs)
    gflop = flops.get_total_flops() / 1e9
    peak = matmul_peak_gflops()
    achieved = gflop / (fused_ms / 1e3)

    shifter.invalidate_fused()
    shifter.activate(REAL)
    one_set = shifter.fused_weight_bytes()
    shifter.activate(SYN)
    two_sets = shifter.fused_weight_bytes()
    unet_bytes = sum(p.numel() * p.element_size() for p in model.unet.parameters())

    request = MultiviewRequest(prompt="a red cube", num_views=4, steps=gen_steps, seed=0)
    pipe.multiview(MultiviewRequest(prompt="warm", num_views=4, steps=2, seed=0))
    gen_s = [pipe.multiview(request).timings["total"] for _ in range(2)]

    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__,
        },
        "model": {
            "name": cfg.name,
            "resolution": cfg.resolution,
            "unet_parameters": sum(p.numel() for p in model.unet.parameters()),
            "adapted_layers": len(shifter.layer_names),
            "adapter_rank": model.shifter_config.rank,
        },
        "unet_batch": n,
        "base_step_ms": round(base_ms, 2),
        "fused_step_ms": round(fused_ms, 2),
        "fused_over_base": round(fused_ms / base_ms, 4),
        "domain_switch_ms": round(switch_ms, 4),
        "switch_over_step": round(switch_ms / fused_ms, 5),
        "unet_gflop_per_step": round(gflop, 2),
        "achieved_gflops": round(achieved, 1),
        "matmul_peak_gflops": round(peak, 1),
        "flops_over_peak": round(achieved / peak, 3),
        "unet_weight_bytes": unet_bytes,
        "adapted_weight_bytes": shifter.adapted_weight_bytes(),
        "extra_bytes_first_fused_set": one_set,
        "extra_bytes_second_fused_set": two_sets - one_set,
        "default_4view_30step_seconds": [round(s, 2) for s in gen_s],
        "goals": {
            "fused_over_base": "<= 1.01",
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
    lines = [
        "# UNet step: Domain Shifter cost (`realiz3d bench unet`)",
        "",
        f"Machine: {r['machine']}. Model: {r['model']}. UNet batch {r['unet_batch']} (4 views x CFG).",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| base UNet step | {r['base_step_ms']} ms | |",
        f"| fused-adapter step | {r['fused_step_ms']} ms | |",
        f"| fused / base | {r['fused_over_base']} | <= 1.01 |",
        f"| domain switch | {r['domain_switch_ms']} ms | |",
        f"| switch / step | {r['switch_over_step']} | <= 0.01 |",
        f"| UNet GFLOP per step | {r['unet_gflop_per_step']} | |",
        f"| achieved GFLOP/s | {r['achieved_gflops']} | |",
        f"| fp32 matmul peak GFLOP/s | {r['matmul_peak_gflops']} | |",
        f"| FLOP/s / peak | {r['flops_over_peak']} | >= 0.4 |",
        f"| UNet weights | {r['unet_weight_bytes'] / 1e6:.2f} MB | |",
        f"| extra memory per fused weight set | {r['extra_bytes_second_fused_set'] / 1e6:.2f} MB "
        f"(adapted layers: {r['adapted_weight_bytes'] / 1e6:.2f} MB) | adapted layers only |",
        f"| this model, 4 views, 30 steps | {r['default_4view_30step_seconds']} s | <= 10 s |",
        "",
    ]
    (out_dir / f"{name}.md").write_text("\n".join(lines))
