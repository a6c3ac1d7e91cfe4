"""The Domain Shifter: small adapters driven by the binary domain covariate (real / synthetic).

Two forms share this interface (configs: `shifter_config.py`):
- `block-shift` (`block_shift.py`, the paper's form and the default): a residual from the domain id
  alone added to the input of every block site. Fused, it is a table lookup whose index is a graph
  input, so one graph serves every schedule and a batch may mix schedules.
- `lora` (`lora_shifter.py`, kept as an option): low-rank adapters on chosen layers; fused, one weight
  set per domain, switched by Parameter reference, so a batch runs one domain assignment.

What both share:
- **Slots** that carry a domain: block sites (block-shift) or adapted layers (lora). Each knows its
  layer group and, if it is inside one, its block site, so a `DomainCombo` (group domains + block
  split) gives every slot a domain: `domain_ids(combos)` is that as an (n, slots) index tensor.
- **Per-sample domains** come in through the UNet's forward (`MultiViewUNet(..., domain_ids=...)`),
  which binds them to `context` for the hooks while the call runs.
- Modes: `off` (the bare UNet; hooks do nothing), `fused`, `unfused` (the adapter math per call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from engines.models.shifter_config import (
    BlockShiftConfig,
    DomainShifterConfig,
    LoraShifterConfig,
    block_sites,
    layer_group,
)
from engines.types import DomainCombo

Mode = Literal["off", "fused", "unfused"]


class DomainContext:
    """The per-sample domain ids of the UNet call in progress (set by `MultiViewUNet.forward`)."""

    def __init__(self) -> None:
        # set here, not first in a call, so a copy taken while a call runs never sees the key appear
        self.ids: torch.Tensor | None = None


class DomainShifterBase(nn.Module):
    """What every form provides; subclasses fill `adapters`, `slot_names` and the hooks."""

    form: str
    adapters: nn.ModuleDict

    def __init__(self, config: DomainShifterConfig, unet: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.domain_index = {d: i for i, d in enumerate(config.domains)}
        self.sites: list[str] = block_sites(unet, config.sites)
        self.context = DomainContext()
        self.mode: Mode = "off"
        # what attaches the shifter to the UNet: hook handles (lora) or shifted forwards (block-shift),
        # each with a `remove()`
        self._hooks: list[Any] = []
        self._slot_site: list[int | None] = []
        self._slot_group: list[str] = []

    @staticmethod
    def key(module_name: str) -> str:
        return module_name.replace(".", "__")

    # ---- slots -------------------------------------------------------------------------------------
    def _add_slot(self, module_name: str) -> None:
        site = next(
            (i for i, s in enumerate(self.sites) if module_name == s or module_name.startswith(s + ".")),
            None,
        )
        self._slot_site.append(site)
        self._slot_group.append(layer_group(module_name))

    @property
    def num_slots(self) -> int:
        return len(self._slot_group)

    @property
    def num_sites(self) -> int:
        return len(self.sites)

    def slot_domains(self, combo: DomainCombo) -> list[str]:
        """The domain of every slot under `combo`."""
        return [
            combo.group_domain(g) if s is None else combo.site_domain(s, g)
            for s, g in zip(self._slot_site, self._slot_group, strict=True)
        ]

    def domain_ids(
        self, combos: Sequence[DomainCombo], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """(n, slots) int64 domain index of every slot for each sample's combo."""
        rows = {c: [self.domain_index[d] for d in self.slot_domains(c)] for c in dict.fromkeys(combos)}
        return torch.tensor([rows[c] for c in combos], dtype=torch.long, device=device)

    def _ids_for(self, batch: int) -> torch.Tensor:
        ids = self.context.ids
        if ids is None:
            raise RuntimeError(
                f"the {self.form} Domain Shifter needs domain_ids in the UNet call ({self.mode})"
            )
        if ids.shape != (batch, self.num_slots):
            raise RuntimeError(
                f"domain_ids of shape {tuple(ids.shape)} for a batch of {batch} x {self.num_slots} slots"
            )
        return ids

    # ---- execution (form-specific) -----------------------------------------------------------------
    def mixes_domains(self, fused: bool) -> bool:
        """Whether one call may give each sample its own domain assignment."""
        raise NotImplementedError

    def fuse(self) -> None:
        raise NotImplementedError

    def activate(self, combo: DomainCombo | None = None) -> None:
        """Fused mode; lora points its layers at `combo`'s weights, block-shift ignores it (its
        domains come per sample with the call)."""
        raise NotImplementedError

    def set_unfused(self) -> None:
        """Unfused mode: the adapter math per call, per-sample domains from the call's domain_ids."""
        raise NotImplementedError

    def deactivate(self) -> None:
        """Run the bare base UNet (no adapter)."""
        raise NotImplementedError

    def invalidate_fused(self) -> None:
        """Drop fused state: after training changed weights, or after moving the UNet to another
        device or dtype."""
        raise NotImplementedError

    def fused_bytes(self) -> int:
        """Memory the fused form holds beyond the base UNet and the adapters."""
        raise NotImplementedError

    def held_tensors(self) -> list[torch.Tensor]:
        """Tensors the shifter holds outside its own and the UNet's parameters and buffers (fused
        tables, base weights): what a structure copy (`Realiz3DModel.denoiser_copy`) shares too."""
        raise NotImplementedError

    def _attach(self, unet: nn.Module) -> None:
        """Install this shifter's hooks or shifted forwards on `unet`, in `_hooks`."""
        raise NotImplementedError

    def reattach(self, unet: nn.Module) -> None:
        """After a deep copy of (UNet, shifter): the copied hooks still call the original shifter (their
        closures are shared, not copied), so drop them from the copied `unet` and attach this shifter's
        own; the copy starts off, with no call in progress."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.context.ids = None
        self._attach(unet)
        self.deactivate()

    # ---- common ------------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.adapters.state_dict().items()}

    def remove(self) -> None:
        """Detach from the UNet: restore it exactly and drop the hooks or shifted forwards."""
        self.deactivate()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def build_domain_shifter(config: DomainShifterConfig, unet: nn.Module) -> DomainShifterBase:
    """The Domain Shifter of `config`'s form, attached to `unet` (a diffusers UNet2DConditionModel)."""
    from engines.models.block_shift import BlockShift
    from engines.models.lora_shifter import LoraShifter

    if isinstance(config, BlockShiftConfig):
        return BlockShift(config, unet)
    if isinstance(config, LoraShifterConfig):
        return LoraShifter(config, unet)
    raise TypeError(f"unknown Domain Shifter config {type(config).__name__}")


DomainShifter = DomainShifterBase
