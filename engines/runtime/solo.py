"""One job alone through a runner: the denoising loop without the step batcher."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from engines.errors import JobCanceled
from engines.requests import CancelCheck, ProgressCallback
from engines.runtime.base import UNetRunner, call_limit, call_pieces, run_padded, synchronize
from engines.sampling.denoise import DenoiseJob


def denoise(
    runner: UNetRunner,
    job: DenoiseJob,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    on_unet_call: Callable[[int, int, float], None] | None = None,
    max_cells: int | None = None,
) -> torch.Tensor:
    """Run one job to the end; checks for cancel before every step, reports progress after it.

    `on_unet_call(images, jobs, seconds)` observes every UNet call (the service's metrics). `max_cells`:
    the budget of one call in UNet-input cells; a step above it runs as several calls of whole objects.
    """
    if not hasattr(runner, "ready_for"):  # graph backends build the job's own shape on its first call;
        runner.prepare(sorted(set(job.combos)))  # their prepare() builds the model's default shape
    while not job.done:
        if should_cancel is not None and should_cancel():
            raise JobCanceled(f"canceled at step {job.step_index}/{job.num_steps}")
        inputs = job.unet_call()
        preds = []
        for _, _, part, domains in call_pieces(
            inputs, job.combo, call_limit(runner, inputs.sample.shape, inputs.num_views, max_cells)
        ):
            t0 = time.perf_counter()
            preds.append(run_padded(runner, part, domains))
            synchronize(runner.device)  # the timing counts the kernels, not their launch
            if on_unet_call is not None:
                on_unet_call(part.batch, 1, time.perf_counter() - t0)
        job.advance(preds[0] if len(preds) == 1 else torch.cat(preds))
        if progress is not None:
            progress(job.step_index, job.num_steps)
    return job.latents
