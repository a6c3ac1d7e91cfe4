"""Peak RAM while loading a UNet: meta-device loading (ours) vs build-random-then-load (the old way).

`realiz3d bench loading [--width 160] [--out docs/benchmarks]` writes a random SD-shaped
UNet folder (SD 1.x's block layout; `--width 320` is SD 1.5 itself, 3.4 GB in fp32), then loads it in fresh
subprocesses and reads each one's peak resident memory (`VmHWM`, which starts afresh at exec) above a
baseline process that only imported the same modules. A benchmark, not a test: figures vary with the machine and its other load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engines.bench.machine import describe, machine

METHODS = ("baseline", "meta", "random-init")


def peak_rss_mib() -> float:
    """This process's high-water resident set size (Linux `VmHWM`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def sd_unet_config(width: int) -> dict:
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [width, 2 * width, 4 * width, 4 * width],
        "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def _child(method: str, folder: Path) -> None:
    """Runs in a fresh process: load the UNet one way and print peak RSS (MiB) and seconds."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from engines.models.model_folder import load_component

    start = time.perf_counter()
    if method == "write":
        unet = UNet2DConditionModel(**json.loads(folder.with_suffix(".json").read_text()))
        unet.save_pretrained(folder, safe_serialization=True)
    elif method == "meta":
        unet = load_component(UNet2DConditionModel, folder)
    elif method == "random-init":
        config = json.loads((folder / "config.json").read_text())
        unet = UNet2DConditionModel.from_config(config)
        unet.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")))
    else:
        unet = None
    seconds = time.perf_counter() - start
    loaded_peak = peak_rss_mib()
    params = sum(p.numel() for p in unet.parameters()) if unet is not None else 0
    if unet is not None:  # read every weight once, as the first denoising step does (mmap'd pages come in)
        sum(float(p.detach().abs().sum()) for p in unet.parameters())
    weights = sum(p.numel() * p.element_size() for p in unet.parameters()) if unet is not None else 0
    print(
        json.dumps(
            {"loading_peak_mib": loaded_peak, "peak_rss_mib": peak_rss_mib(), "seconds": seconds}
            | {"params": params, "bytes": weights}
        )
    )


def _in_child(method: str, folder: Path) -> dict:
    # Everything heavy runs in children: the parent never holds weights, so no child inherits them.
    cmd = [sys.executable, "-m", "engines.bench.loading", "--child", method, str(folder)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def run(width: int, out_dir: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-loading-") as tmp:
        folder = Path(tmp) / "unet"
        folder.with_suffix(".json").write_text(json.dumps(sd_unet_config(width)))
        written = _in_child("write", folder)
        figures = {method: _in_child(method, folder) for method in METHODS}
    weights_mib = written["bytes"] / 2**20
    base = figures["baseline"]["peak_rss_mib"]
    result = {
        "machine": machine(),
        "width": width,
        "unet_weights_mib": round(weights_mib, 1),
        "params": figures["meta"]["params"],
        "baseline_rss_mib": round(base, 1),
        **{
            m: {
                "loading_peak_above_baseline_mib": round(figures[m]["loading_peak_mib"] - base, 1),
                "peak_above_baseline_mib": round(figures[m]["peak_rss_mib"] - base, 1),
                "peak_over_weights": round((figures[m]["peak_rss_mib"] - base) / weights_mib, 2),
                "seconds": round(figures[m]["seconds"], 2),
            }
            for m in ("meta", "random-init")
        },
    }
    if out_dir is not None:
        write_report(result, out_dir)
    return result


def write_report(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model_loading.json").write_text(json.dumps(result, indent=2))
    meta, old = result["meta"], result["random-init"]
    lines = [
        "# Peak RAM while loading a UNet",
        "",
        "`realiz3d bench loading --width "
        f"{result['width']}` (one run; fresh subprocess per method, peak RSS above a "
        f"process that only imported the same modules; seconds are noisy on a shared machine). Machine: "
        f"{describe(result['machine'])}.",
        "",
        f"SD 1.x block layout at width {result['width']}: {result['params'] / 1e6:.0f} M parameters, "
        f"{result['unet_weights_mib']:.0f} MiB of fp32 weights.",
        "",
        "| loading | peak RAM above baseline, after every weight was read once | / weights | "
        "at the end of loading | seconds to load |",
        "|---|---|---|---|---|",
        f"| meta device + assign (`load_component`, as `load_model` loads) | {meta['peak_above_baseline_mib']:.0f} MiB | "
        f"{meta['peak_over_weights']:.2f} | {meta['loading_peak_above_baseline_mib']:.0f} MiB | "
        f"{meta['seconds']:.2f} |",
        f"| random init, then load_state_dict (before) | {old['peak_above_baseline_mib']:.0f} MiB | "
        f"{old['peak_over_weights']:.2f} | {old['loading_peak_above_baseline_mib']:.0f} MiB | "
        f"{old['seconds']:.2f} |",
        "",
        "Meta-device loading holds one copy of the weights: the file's tensors (memory-mapped by safetensors, "
        "so they become resident as they are first read) become the parameters. The old way built random "
        "weights (time spent initialising them) and then held them and the file's tensors at once.",
        "",
    ]
    (out_dir / "model_loading.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=160, help="first block's channels (SD 1.5: 320)")
    p.add_argument("--out", type=Path, default=None, help="write model_loading.{json,md} here")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], Path(args.child[1]))
        return 0
    print(json.dumps(run(args.width, args.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
