"""What a UNet benchmark report says about the machine it ran on."""

from __future__ import annotations

import os
import platform

import torch


def torch_machine() -> dict:
    """CPU, torch's thread count, OMP_NUM_THREADS and the torch version: what the timings depend on."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
    }
