"""`realiz3d bench resolution`: what a 64 px default model would cost against the shipped 32 px one.

The shipped model's architecture (widths 32/64/64, block-shift Domain Shifter) built fresh at each
resolution, measured in one run, interleaved, medians:
- one training step of the recipe's heaviest kind (2 synthetic objects x 4 views with their controls +
  8 photographs: two forward and backward passes, what every stage-1/2/naive step costs);
- one 4-view, 30-step generation (DDIM, guidance on: a UNet batch of 8), the product's <= 10 s bar;
- the wall time the shipped training recipe would take at that step cost (steps x median step time, for
  the steps of one method run alone; a projection, not a run).
Training data is a small toy set made at each resolution (the step cost does not depend on its size).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engines.bench import OUT_DIR
from engines.bench.machine import describe, torch_machine
from engines.models.model_folder import save_model
from engines.pipelines import Realiz3DPipeline
from engines.requests import MultiviewRequest
from engines.training.data import DataSpec
from engines.training.train import TrainConfig, Trainer, fresh_model

#: The shipped recipe (docs/training.md): base 1500 steps (one real pass each), then per method 6000
#: steps of two passes (stage 1 + stage 2, or naive).
RECIPE = {"base": 1500, "method": 6000}


def _trainer(resolution: int, folder: Path) -> Trainer:
    """A naive-stage trainer (stage-2 data from the first step) on a fresh model at `resolution`."""
    data = DataSpec(synthetic=8, real=32, seed=5, resolution=resolution)
    cfg = TrainConfig(stage="naive", steps=10_000, resolution=resolution, data=data, log_every=10**9)
    init = save_model(fresh_model(cfg), folder / "fresh")
    return Trainer(cfg, folder / "run", init=init, log=lambda _m: None)


def run_resolution_bench(
    out_dir: str | Path = OUT_DIR,
    resolutions: tuple[int, ...] = (32, 64),
    train_rounds: int = 6,
    steps_per_round: int = 5,
    gen_repeats: int = 3,
    gen_steps: int = 30,
) -> dict:
    """Measure every resolution; write resolution.json and resolution.md into `out_dir`."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="realiz3d-res-bench-") as tmp:
        trainers = {r: _trainer(r, Path(tmp) / f"r{r}") for r in resolutions}
        step_s: dict[int, list[float]] = {r: [] for r in resolutions}
        for t in trainers.values():  # warm-up: first calls allocate
            t.train_step(0)
        step = 1
        for _ in range(train_rounds):
            for r, t in trainers.items():
                t0 = time.perf_counter()
                for k in range(steps_per_round):
                    t.train_step(step + k)
                step_s[r].append((time.perf_counter() - t0) / steps_per_round)
            step += steps_per_round
        pipes = {}
        for r, t in trainers.items():
            t.model.eval()
            pipes[r] = Realiz3DPipeline(t.model)
    gen_s: dict[int, list[float]] = {r: [] for r in resolutions}
    request = MultiviewRequest(prompt="a red cube", num_views=4, steps=gen_steps, seed=0)
    with torch.inference_mode():
        for pipe in pipes.values():
            pipe.multiview(request.model_copy(update={"steps": 2}))
        for _ in range(gen_repeats):
            for r, pipe in pipes.items():
                t0 = time.perf_counter()
                pipe.multiview(request)
                gen_s[r].append(time.perf_counter() - t0)
    rows = []
    base_res = resolutions[0]
    for r in resolutions:
        step_med = statistics.median(step_s[r])
        # a base step is one real pass: about half a two-pass step
        recipe_s = RECIPE["base"] * step_med / 2 + RECIPE["method"] * step_med
        rows.append(
            {
                "resolution": r,
                "parameters": pipes[r].model.parameter_count(),
                "train_step_s": round(step_med, 4),
                "train_step_ratio": round(step_med / statistics.median(step_s[base_res]), 3),
                "generate_4x30_s": round(statistics.median(gen_s[r]), 3),
                "generate_ratio": round(statistics.median(gen_s[r]) / statistics.median(gen_s[base_res]), 3),
                "recipe_one_method_min": round(recipe_s / 60, 1),
            }
        )
    result = {
        "machine": torch_machine(),
        "train_step_samples_s": {str(r): [round(v, 4) for v in step_s[r]] for r in resolutions},
        "generate_samples_s": {str(r): [round(v, 3) for v in gen_s[r]] for r in resolutions},
        "rows": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "resolution.json").write_text(json.dumps(result, indent=2))
    (out_dir / "resolution.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [
        "# Default model resolution: 32 px vs 64 px (`realiz3d bench resolution`)",
        "",
        f"Machine: {describe(result['machine'])}. The shipped architecture (UNet widths 32/64/64, block-shift shifter) "
        "built fresh at each resolution and measured in one run, interleaved, medians. *Train step*: 2 "
        "synthetic objects x 4 views with controls + 8 photographs (two forward/backward passes). "
        "*Generate*: 4 views x 30 DDIM steps with guidance (goal <= 10 s). *Recipe, one method*: base "
        f"{RECIPE['base']} steps (one pass) + {RECIPE['method']} two-pass steps at that step time, one "
        "process alone on the machine: a projection from the measured step, not a run.",
        "",
        "| resolution | parameters | train step | vs 32 px | generate 4x30 | vs 32 px | recipe, one method |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['resolution']} px | {r['parameters']:,} | {r['train_step_s'] * 1e3:.1f} ms "
            f"| {r['train_step_ratio']:.2f}x | {r['generate_4x30_s']:.2f} s | {r['generate_ratio']:.2f}x "
            f"| {r['recipe_one_method_min']:.0f} min |"
        )
    return "\n".join(lines) + "\n"
