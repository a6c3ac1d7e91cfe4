"""Eager PyTorch runner (fp32 / bf16 / fp16), fused or unfused Domain Shifter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from engines.models.realiz3d_model import Realiz3DModel
from engines.models.unet import UNetInputs
from engines.runtime.base import per_sample, run_per_combo
from engines.sampling.schedule import DomainCombo

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchRunner:
    """Calls the model's UNet directly.

    fused: before a call, `shifter.activate(combo)` points the adapted layers at that combo's precomputed
    weights (a reference swap; free when the combo did not change). A batch mixing combos is split into
    one sub-call per combo. unfused: the adapters' low-rank branch runs per sample, any mix in one call.
    """

    backend = "torch"

    def __init__(self, model: Realiz3DModel, adapters: Literal["fused", "unfused"] = "fused") -> None:
        self.model = model
        self.adapters = adapters
        self.mixes_domains = adapters == "unfused"
        self.device = model.device
        self.dtype = model.dtype

    def prepare(self, combos: Sequence[DomainCombo]) -> None:
        if self.adapters == "fused":
            self.model.shifter.fuse(sorted({d for c in combos for d in c}))

    @torch.no_grad()
    def __call__(self, inputs: UNetInputs, domains: DomainCombo | Sequence[DomainCombo]) -> torch.Tensor:
        shifter = self.model.shifter
        if self.adapters == "unfused":
            shifter.set_sample_domains(per_sample(domains, inputs.batch), device=self.device)
            return self._run(inputs)

        def run_one(x: UNetInputs, combo: DomainCombo) -> torch.Tensor:
            shifter.activate(combo)
            return self._run(x)

        # Mixed combos under fused weights: one sub-batch per combo, whole objects kept together.
        return run_per_combo(inputs, domains, run_one, self.device)

    def _run(self, inputs: UNetInputs) -> torch.Tensor:
        x = cast_inputs(inputs, self.device, self.dtype)
        return self.model.unet.run(x).float()


def cast_inputs(inputs: UNetInputs, device: torch.device, dtype: torch.dtype) -> UNetInputs:
    def c(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=dtype)

    return UNetInputs(
        sample=c(inputs.sample),  # type: ignore[arg-type]
        timestep=inputs.timestep.to(device),
        text=c(inputs.text),  # type: ignore[arg-type]
        cameras=c(inputs.cameras),  # type: ignore[arg-type]
        geometry=c(inputs.geometry),
        num_views=inputs.num_views,
    )
