"""Eager PyTorch runner (fp32 / bf16 / fp16), fused or unfused Domain Shifter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from engines.models.realiz3d_model import Realiz3DModel
from engines.runtime.base import per_sample, run_domains
from engines.types import DomainCombo, UNetInputs

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` (CUDA when there is one, else CPU), `cpu`, `cuda`, `cuda:N`...; a device this machine or this
    torch build cannot use is a one-line UserInputError naming it, not a traceback at the first tensor."""
    from engines.errors import UserInputError

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserInputError(
            f"device {str(device)!r}: not a device (use auto, cpu, cuda or cuda:N)"
        ) from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise UserInputError(
                f"device {str(device)!r}: this PyTorch ({torch.__version__}) is built without CUDA; "
                "use --device cpu (or auto), or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise UserInputError(f"device {str(device)!r}: this machine has {count} CUDA GPU(s) visible")
    return dev


class TorchRunner:
    """Calls the model's UNet directly.

    fused: block-shift looks up its offset tables with each sample's domain ids (any mix in one call);
    lora points the adapted layers at the combo's precomputed weights (a reference swap; a batch mixing
    combos is split into one sub-call per combo). unfused: the adapter math runs per sample.
    """

    backend = "torch"

    def __init__(self, model: Realiz3DModel, adapters: Literal["fused", "unfused"] = "fused") -> None:
        self.model = model
        self.adapters = adapters
        self.mixes_domains = model.shifter.mixes_domains(adapters == "fused")
        self.device = model.device
        self.dtype = model.dtype

    def prepare(self, combos: Sequence[DomainCombo]) -> None:
        if self.adapters == "fused":
            self.model.shifter.fuse()

    @torch.no_grad()
    def __call__(self, inputs: UNetInputs, domains: DomainCombo | Sequence[DomainCombo]) -> torch.Tensor:
        shifter = self.model.shifter
        fused = self.adapters == "fused"

        def run_one(x: UNetInputs, combo: DomainCombo | None, ids: torch.Tensor | None) -> torch.Tensor:
            if fused:
                shifter.activate(combo)
            else:
                shifter.set_unfused()
            return self.model.unet.run(cast_inputs(x, self.device, self.dtype), ids).float()

        return run_domains(shifter, inputs, domains, run_one, self.device, fused)

    @property
    def step_cache(self) -> bool:
        """Whether `run_step` serves step caching: one call takes per-sample domains (block-shift, or
        unfused adapters) and the UNet has the layout `deep_cache.split_forward` follows."""
        from engines.models.deep_cache import supports_step_cache

        return self.mixes_domains and supports_step_cache(self.model.unet.unet)

    @torch.no_grad()
    def run_step(
        self,
        inputs: UNetInputs,
        domains: DomainCombo | Sequence[DomainCombo],
        deep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A step-caching call: the whole UNet (`deep=None`) returning (noise prediction, deep feature),
        or its shallow branch on `deep` (engines/models/deep_cache.py)."""
        shifter = self.model.shifter
        if self.adapters == "fused":
            shifter.activate(None)
        else:
            shifter.set_unfused()
        ids = shifter.domain_ids(per_sample(domains, inputs.batch), device=inputs.sample.device)
        x = cast_inputs(inputs, self.device, self.dtype)
        pred, feature = self.model.unet.run_step(x, ids, deep)
        return pred.float(), feature


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
