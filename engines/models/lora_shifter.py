"""The lora form of the Domain Shifter (our first reading of the paper, kept as an option).

On each target layer (Linear or Conv2d, chosen by module-name regex)

    y = W x + B (e_d * (A x))

with A (rank x in), B (out x rank) and one learned vector e_d (length rank) per domain d. The branch is
linear in x, so it folds exactly into the weight: W_d = W + B diag(e_d) A.

- **fused** (`activate(combo)`): one fused weight per adapted layer and domain is computed once
  (`fuse()`); switching the assignment swaps Parameter references on the adapted layers only. One call
  runs one `DomainCombo`: a schedule needs one weight set (one compiled graph) per combo it visits.
- **unfused** (`set_unfused()`): a forward hook adds the low-rank branch with each sample's domain (the
  call's `domain_ids`, one column per adapted layer), so one batch may mix domains.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import nn

from engines.models.domain_shifter import DomainShifterBase
from engines.models.shifter_config import LoraShifterConfig
from engines.types import DomainCombo, uniform_combo


class LowRankDomainAdapter(nn.Module):
    """A (down-projection, same kernel as the base layer), B (1x1 up-projection), e (one row per domain)."""

    def __init__(self, base: nn.Module, rank: int, num_domains: int) -> None:
        super().__init__()
        if isinstance(base, nn.Linear):
            self.kind: Literal["linear", "conv"] = "linear"
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        elif isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise ValueError("grouped convolutions cannot carry a Domain Shifter adapter")
            self.kind = "conv"
            self.down = nn.Conv2d(
                base.in_channels,
                rank,
                base.kernel_size,
                stride=base.stride,
                padding=base.padding,
                dilation=base.dilation,
                bias=False,
            )
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            raise TypeError(f"cannot adapt {type(base).__name__}; only Linear and Conv2d")
        self.domain_embed = nn.Parameter(torch.zeros(num_domains, rank))

    def delta_weight(self, domain_index: int) -> torch.Tensor:
        """B diag(e_d) A in the base layer's weight shape."""
        e = self.domain_embed[domain_index]
        if self.kind == "linear":
            return self.up.weight @ (e[:, None] * self.down.weight)
        up = self.up.weight[:, :, 0, 0]  # (out, r)
        return torch.einsum("or,r,rikl->oikl", up, e, self.down.weight)

    def branch(self, x: torch.Tensor, domain_index: torch.Tensor) -> torch.Tensor:
        """B (e_d * (A x)) with one domain per sample (leading dim of x)."""
        h = self.down(x)
        e = self.domain_embed[domain_index]  # (n, r)
        shape = (
            (e.shape[0], e.shape[1], 1, 1)
            if self.kind == "conv"
            else (e.shape[0],) + (1,) * (h.ndim - 2) + (e.shape[1],)
        )
        return self.up(h * e.reshape(shape).to(h.dtype))


class LoraShifter(DomainShifterBase):
    form = "lora"

    def __init__(self, config: LoraShifterConfig, unet: nn.Module) -> None:
        super().__init__(config, unet)
        patterns = [re.compile(p) for p in config.targets]
        self.layer_names: list[str] = []
        self._layers: dict[str, nn.Module] = {}
        adapters = {}
        for name, module in unet.named_modules():
            if isinstance(module, nn.Linear | nn.Conv2d) and any(p.fullmatch(name) for p in patterns):
                adapters[self.key(name)] = LowRankDomainAdapter(module, config.rank, len(config.domains))
                self.layer_names.append(name)
                self._layers[name] = module
                self._add_slot(name)
        if not adapters:
            raise ValueError("Domain Shifter target patterns match no Linear/Conv2d layer of the UNet")
        self.adapters = nn.ModuleDict(adapters)
        self._base_weights = {name: m.weight for name, m in self._layers.items()}
        self._fused: dict[str, dict[str, nn.Parameter]] = {}
        self._active: DomainCombo | None = None
        self._attach(unet)

    def _attach(self, unet: nn.Module) -> None:
        # `_layers` names the modules of `unet` (a deep copy maps them to the copy's)
        self._hooks = [
            module.register_forward_hook(self._make_hook(name, j))
            for j, (name, module) in enumerate(self._layers.items())
        ]

    def adapter(self, module_name: str) -> LowRankDomainAdapter:
        return self.adapters[self.key(module_name)]  # type: ignore[return-value]

    def _make_hook(self, name: str, slot: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
            if self.mode != "unfused":
                return None
            x = inputs[0]
            return output + self.adapter(name).branch(x, self._ids_for(x.shape[0])[:, slot])

        return hook

    def mixes_domains(self, fused: bool) -> bool:
        return not fused

    def set_unfused(self) -> None:
        self._restore_base()
        self.mode = "unfused"

    # ---- fused -------------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self, domains: list[str] | None = None) -> None:
        """Compute W_d = W + B diag(e_d) A once per adapted layer and domain (idempotent). The tables are
        replaced, never changed in place, so a copy taken meanwhile (`Realiz3DModel.denoiser_copy`) reads
        a consistent one."""
        fused = {name: dict(per) for name, per in self._fused.items()}
        for d in domains or self.config.domains:
            i = self.domain_index[d]
            for name in self.layer_names:
                per_layer = fused.setdefault(name, {})
                if d in per_layer:
                    continue
                base = self._base_weights[name]
                delta = self.adapter(name).delta_weight(i).to(base.dtype)
                per_layer[d] = nn.Parameter((base + delta).detach(), requires_grad=False)
        self._fused = fused

    def activate(self, combo: DomainCombo | None = None) -> None:
        """Point every adapted layer at the weight of its domain under `combo` (a reference swap)."""
        combo = combo or uniform_combo("real")
        if self.mode == "fused" and self._active == combo:
            return
        domains = self.slot_domains(combo)
        self.fuse(sorted(set(domains)))
        for (name, module), domain in zip(self._layers.items(), domains, strict=True):
            module._parameters["weight"] = self._fused[name][domain]
        self.mode = "fused"
        self._active = combo

    def _restore_base(self) -> None:
        for name, module in self._layers.items():
            module._parameters["weight"] = self._base_weights[name]
        self._active = None

    def deactivate(self) -> None:
        self._restore_base()
        self.mode = "off"

    def invalidate_fused(self) -> None:
        self._restore_base()
        self.mode = "off"
        self._fused = {}

    def adapted_weight_bytes(self) -> int:
        """Bytes of the base weights of all adapted layers: the cost of one more fused weight set."""
        return sum(w.numel() * w.element_size() for w in self._base_weights.values())

    def fused_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for per in self._fused.values() for p in per.values())

    def held_tensors(self) -> list[torch.Tensor]:
        return [*self._base_weights.values(), *(p for per in self._fused.values() for p in per.values())]
