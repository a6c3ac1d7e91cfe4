"""`realiz3d bench unet`, part 2: ms per UNet step for each backend and precision.

On the embedded default model (4 views, classifier-free guidance: a UNet batch of 8), per (backend,
precision): the median ms per step, its ratio to eager PyTorch at the same precision measured in the same
run (repetitions interleaved A/B/A/B so load drift hits every backend alike), and FLOP/s (FLOPs counted
once with `torch.utils.flop_counter.FlopCounterMode` on the eager model) over the measured matmul peak.
Each timed step alternates the domain combo (real / synthetic), so weight-set switching is included.

CPU table unless `cpu=False`; the GPU table (fp16 and bf16: eager vs compile with CUDA graphs vs
TensorRT, over the measured bf16 matmul peak) only where a CUDA GPU is present; TensorRT only where it
is installed. Rows that cannot run here are written with the reason, never with a number.

`shape="sd"` times a seeded model at Stable Diffusion 1.x shapes (`engines/bench/sd_like.py`: 64 x 64
latents, 77 x 768 text) instead of the embedded default, the shapes the GPU goals are stated at.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from engines.bench import OUT_DIR
from engines.bench.machine import describe, torch_machine
from engines.sampling.cameras import camera_embeddings, orbit_cameras
from engines.types import UNetInputs, uniform_combo

SHAPES = ("default", "sd")

REAL, SYN = uniform_combo("real"), uniform_combo("synthetic")
VIEWS = 4


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, device: str = "cpu", size: int = 1024) -> float:
    """Best-of dense matmul throughput on this machine (the practical peak)."""
    if device != "cpu":
        size = 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(20 if device == "cpu" else 50):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def bench_inputs(model, device: str | torch.device) -> UNetInputs:
    cfg = model.config
    n = 2 * VIEWS
    size = cfg.resolution // cfg.downsample_factor * cfg.patch_size
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        text = model.text_encoder.encode(["", "a red cube"]).float()
    return UNetInputs(
        sample=torch.randn(n, cfg.image_channels, size, size, generator=gen).to(device),
        timestep=torch.full((n,), 500, dtype=torch.long, device=device),
        text=torch.cat([text[:1].expand(VIEWS, -1, -1), text[1:].expand(VIEWS, -1, -1)]).to(device),
        cameras=torch.from_numpy(camera_embeddings(orbit_cameras(VIEWS))).repeat(2, 1).to(device),
        geometry=None,
        num_views=VIEWS,
    )


@dataclass
class Row:
    backend: str
    precision: str
    device: str
    ms: list[float] = field(default_factory=list)
    setup_s: float = 0.0
    skipped: str | None = None
    runner: Any = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms)


def _load(backend: str, precision: str, device: str, cache_dir: Path | None, shape: str = "default") -> Any:
    from engines.pipelines import Realiz3DPipeline

    if shape == "default":
        pipe = Realiz3DPipeline.load(
            None, backend=backend, precision=precision, device=device, engine_cache_dir=cache_dir
        )
        return pipe.runner
    from engines.bench.sd_like import sd_like_model
    from engines.runtime.factory import make_runner
    from engines.runtime.torch_runner import PRECISIONS

    model = sd_like_model()
    # as Realiz3DPipeline.load: eager runs in its precision; compiled backends cast what they build
    model.to(torch.device(device), PRECISIONS[precision] if backend == "torch" else torch.float32)
    return make_runner(model.eval(), backend=backend, precision=precision, engine_cache_dir=cache_dir)


def _load_average() -> str:
    """The 1-minute load average, for the report (ratios are robust to load, absolute times are not)."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def measure(
    configs: list[tuple[str, str]], device: str, repeats: int, cache_dir: Path | None, shape: str = "default"
) -> tuple[list[Row], UNetInputs, Any]:
    rows = [Row(b, p, device) for b, p in configs]
    inputs = None
    eager_model = None
    for row in rows:
        if row.backend == "tensorrt":
            from engines.runtime.tensorrt_runner import tensorrt_available

            if not tensorrt_available():
                row.skipped = "TensorRT not installed or no CUDA GPU here: not run"
                continue
        if row.backend == "torch-tensorrt":
            from engines.runtime.torch_tensorrt_runner import torch_tensorrt_available

            if not torch_tensorrt_available():  # before building the model it would be given
                row.skipped = "torch-tensorrt not installed or no CUDA GPU here: not run"
                continue
        if row.backend == "onnx" and row.precision != "fp32":
            row.skipped = "onnx backend runs fp32 only"
            continue
        t0 = time.perf_counter()
        try:
            row.runner = _load(row.backend, row.precision, device, cache_dir, shape)
        except Exception as e:  # noqa: BLE001 - a backend that cannot load is reported, not fatal
            row.skipped = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        if inputs is None:
            inputs = bench_inputs(row.runner.model, device)
        if row.backend == "torch" and (eager_model is None or row.precision == "fp32"):
            eager_model = row.runner.model  # FLOPs are counted once, on an eager model
        row.runner.prepare([REAL, SYN])
        for combo in (REAL, SYN, REAL, SYN):  # compile / export / first-call allocation
            row.runner(inputs, combo)
        _sync(device)
        row.setup_s = time.perf_counter() - t0
    live = [r for r in rows if r.skipped is None]
    for i in range(repeats):  # interleaved: every backend once per round
        combo = REAL if i % 2 == 0 else SYN
        for row in live:
            _sync(device)
            t0 = time.perf_counter()
            row.runner(inputs, combo)
            _sync(device)
            row.ms.append((time.perf_counter() - t0) * 1e3)
    return rows, inputs, eager_model


@torch.no_grad()
def count_flops(model, inputs: UNetInputs) -> float:
    """FLOPs of one UNet call on `model` (in its own dtype: the eager model of a GPU run is fp16 or bf16,
    and `inputs` are fp32, as the runners take them)."""
    from engines.runtime.torch_runner import cast_inputs

    inputs = cast_inputs(inputs, model.device, model.dtype)
    counter = FlopCounterMode(display=False)
    model.shifter.activate(REAL)
    ids = model.shifter.domain_ids([REAL] * inputs.batch, inputs.sample.device)
    with counter:
        model.unet.run(inputs, ids)
    return float(counter.get_total_flops())


def summarize(rows: list[Row], flops: float, peak_gflops: float) -> list[dict[str, Any]]:
    eager = {r.precision: r for r in rows if r.backend == "torch" and r.skipped is None}
    out = []
    for r in rows:
        entry: dict[str, Any] = {"backend": r.backend, "precision": r.precision, "device": r.device}
        if r.skipped is not None:
            entry["skipped"] = r.skipped
        else:
            ref = eager.get(r.precision)
            ms = r.median_ms
            entry.update(
                ms_per_step=round(ms, 2),
                ms_min=round(min(r.ms), 2),
                speedup_vs_eager=round(ref.median_ms / ms, 3) if ref else None,
                gflops=round(flops / (ms / 1e3) / 1e9, 1),
                flops_over_peak=round(flops / (ms / 1e3) / 1e9 / peak_gflops, 3),
                setup_s=round(r.setup_s, 1),
                repeats=len(r.ms),
            )
        out.append(entry)
    return out


def run_backend_bench(
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    repeats: int = 20,
    out_dir: str | Path = OUT_DIR,
    cache_dir: str | Path | None = None,
    gpu: bool | None = None,
    shape: str = "default",
    cpu: bool = True,
    gpu_precisions: list[str] | None = None,
    name: str = "backends",
) -> dict[str, Any]:
    """Measure, write `<name>.json` + `<name>.md` into out_dir, print the table, return the result.

    `cpu=False` skips the CPU table (an SD-shaped UNet on the CPU takes minutes per step); the GPU table
    measures `gpu_precisions` (default fp16 and bf16) for eager, compile, TensorRT and torch-tensorrt."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    backends = backends or ["torch", "compile", "onnx"]
    precisions = precisions or ["fp32", "bf16"]
    if "torch" not in backends:
        backends = ["torch", *backends]  # the eager reference is always measured in the same run
    cache = Path(cache_dir) if cache_dir is not None else None
    flops = float("nan")
    peak = matmul_peak_gflops()
    rows: list[Row] = []
    inputs = None
    if cpu:
        configs = [(b, p) for p in precisions for b in backends]
        rows, inputs, eager_model = measure(configs, "cpu", repeats, cache, shape)
        flops = count_flops(eager_model, inputs) if eager_model is not None else float("nan")
    result: dict[str, Any] = {
        "machine": {
            **torch_machine(),
            "note": "ratios within one run are the figures to use (load average before the run: "
            + _load_average()
            + ")",
        },
        "model": "embedded default (realiz3d-default)" if shape == "default" else "seeded SD-1.x-shaped UNet",
        "unet_batch": inputs.batch if inputs is not None else None,
        "views": VIEWS,
        "unet_gflop_per_step": round(flops / 1e9, 2),
        "cpu_matmul_peak_gflops_fp32": round(peak, 1),
        "cpu": summarize(rows, flops, peak) if cpu else None,
    }
    if gpu is None:
        gpu = torch.cuda.is_available()
    if gpu:
        gpu_backends = ["torch", "compile", "tensorrt", "torch-tensorrt"]
        configs = [(b, p) for p in gpu_precisions or ["fp16", "bf16"] for b in gpu_backends]
        g_rows, g_inputs, g_eager = measure(configs, "cuda", repeats * 5, cache, shape)
        g_flops = count_flops(g_eager, g_inputs) if g_eager is not None else flops
        if inputs is None:
            result["unet_batch"] = g_inputs.batch if g_inputs is not None else None
            result["unet_gflop_per_step"] = round(g_flops / 1e9, 2)
        g_peak = matmul_peak_gflops(torch.bfloat16, "cuda")
        result["gpu"] = {
            "device": torch.cuda.get_device_name(),
            "matmul_peak_gflops_bf16": round(g_peak, 1),
            "rows": summarize(g_rows, g_flops, g_peak),
            "goal": "compile + CUDA graphs fp16 >= 1.5x eager fp16, >= 30% of bf16 peak at SD-size shapes",
        }
    else:
        result["gpu"] = {"skipped": "no CUDA GPU on this machine: GPU table not measured"}
        if not cpu:  # nothing was measured: keep the last report rather than overwrite it with none
            print("bench unet: GPU table only (cpu=False) and no CUDA GPU here: no backend report written")
            return result
    write_report(result, Path(out_dir), name)
    print(markdown(result))
    return result


def markdown(r: dict[str, Any]) -> str:
    def table(rows: list[dict[str, Any]]) -> list[str]:
        lines = [
            "| backend | precision | ms / step | vs eager (same precision) | GFLOP/s | FLOP/s / peak | setup s |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in rows:
            if "skipped" in e:
                lines.append(f"| {e['backend']} | {e['precision']} | skipped: {e['skipped']} | | | | |")
            else:
                lines.append(
                    f"| {e['backend']} | {e['precision']} | {e['ms_per_step']} | {e['speedup_vs_eager']}x | "
                    f"{e['gflops']} | {e['flops_over_peak']} | {e['setup_s']} |"
                )
        return lines

    m = r["machine"]
    out = [
        "# UNet step per backend (`realiz3d bench unet`)",
        "",
        f"{r['model']}, {r['views']} views x CFG = UNet batch {r['unet_batch']}, "
        f"{r['unet_gflop_per_step']} GFLOP per step (FlopCounterMode). Median of interleaved repetitions; "
        "each step alternates the real / synthetic weight set.",
        "",
        f"## CPU ({describe(m)})",
        "",
        f"fp32 matmul peak measured: {r['cpu_matmul_peak_gflops_fp32']} GFLOP/s. {m['note']}.",
        "",
        *(table(r["cpu"]) if r["cpu"] is not None else ["Not measured (`cpu=False`)."]),
        "",
        "## GPU",
        "",
    ]
    g = r["gpu"]
    if "skipped" in g:
        out.append(f"Not measured: {g['skipped']}.")
    else:
        out += [
            f"{g['device']}, bf16 matmul peak {g['matmul_peak_gflops_bf16']} GFLOP/s. Goal: {g['goal']}.",
            "",
        ]
        out += table(g["rows"])
    out += [
        "",
        "TensorRT rows appear only where TensorRT and a GPU exist; it has not run on this machine.",
        "",
    ]
    return "\n".join(out)


def write_report(result: dict[str, Any], out_dir: Path, name: str = "backends") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{name}.md").write_text(markdown(result))
