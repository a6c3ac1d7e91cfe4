"""One job alone through a runner: the denoising loop without the step batcher."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from engines.errors import JobCanceled
from engines.requests import CancelCheck, ProgressCallback
from engines.runtime.base import UNetRunner, run_padded
from engines.sampling.denoise import DenoiseJob


def denoise(
    runner: UNetRunner,
    job: DenoiseJob,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    on_unet_call: Callable[[int, int, float], None] | None = None,
) -> torch.Tensor:
    """Run one job to the end; checks for cancel before every step, reports progress after it.

    `on_unet_call(images, jobs, seconds)` observes every UNet call (the service's metrics).
    """
    runner.prepare(sorted(set(job.combos)))
    while not job.done:
        if should_cancel is not None and should_cancel():
            raise JobCanceled(f"canceled at step {job.step_index}/{job.num_steps}")
        inputs = job.unet_call()
        t0 = time.perf_counter()
        pred = run_padded(runner, inputs, job.combo)
        if on_unet_call is not None:
            on_unet_call(inputs.batch, 1, time.perf_counter() - t0)
        job.advance(pred)
        if progress is not None:
            progress(job.step_index, job.num_steps)
    return job.latents
