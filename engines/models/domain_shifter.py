"""The Domain Shifter: low-rank residual adapters driven by the binary domain covariate.

On each target layer (Linear or Conv2d, chosen by module-name regex so placement is layer-aware)

    y = W x + B (e_d * (A x))

with A (rank x in), B (out x rank) and one learned vector e_d (length rank) per domain d. The branch is
linear in x, so it folds exactly into the weight: W_d = W + B diag(e_d) A.

Two ways to run it:
- **fused** (`activate(combo)`): one fused weight per adapted layer and domain is computed once
  (`fuse()`); switching domain, also per layer group (down/mid/up) and mid-sampling, swaps Parameter
  references on the adapted layers only. No copy, no reload, no extra work per step.
- **unfused** (`set_sample_domains(...)`): a forward hook adds the low-rank branch with a per-sample
  domain, so one batch may mix domains (and jobs). Numerically the same as fused (fp32 ~1e-6).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from engines.sampling.schedule import DOMAINS, LAYER_GROUPS, DomainCombo

DEFAULT_TARGETS = (
    r".*attn1\.to_(q|k|v)$",
    r".*attn1\.to_out\.0$",
    r".*attn2\.to_out\.0$",
    r".*ff\.net\.2$",
    r".*resnets\.\d+\.conv(1|2)$",
    r"^conv_out$",
)


class DomainShifterConfig(BaseModel):
    """`domain_shifter/config.json`."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(4, ge=1, le=256)
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    domains: list[str] = Field(default_factory=lambda: list(DOMAINS))

    @field_validator("targets")
    @classmethod
    def _valid_regexes(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"target pattern {pattern!r} is not a valid regex: {e}") from None
        return v

    @field_validator("domains")
    @classmethod
    def _real_and_synthetic(cls, v: list[str]) -> list[str]:
        if sorted(v) != sorted(DOMAINS):
            raise ValueError(f"domains must be exactly {list(DOMAINS)}")
        return v


def layer_group(module_name: str) -> str:
    """Which schedule group (down / mid / up) a UNet module belongs to.

    Everything before the mid block (conv_in, time and camera embeddings, down blocks) is `down`;
    the decoder and the output head are `up`.
    """
    if module_name.startswith("mid_block"):
        return "mid"
    if module_name.startswith(("up_blocks", "conv_norm_out", "conv_out")):
        return "up"
    return "down"


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


class DomainShifter(nn.Module):
    """Adapters attached to a UNet's target layers, with fused and unfused execution."""

    def __init__(self, config: DomainShifterConfig, unet: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.domain_index = {d: i for i, d in enumerate(config.domains)}
        patterns = [re.compile(p) for p in config.targets]
        self.layer_names: list[str] = []
        self.groups: dict[str, str] = {}
        self._layers: dict[str, nn.Module] = {}
        adapters = {}
        for name, module in unet.named_modules():
            if isinstance(module, nn.Linear | nn.Conv2d) and any(p.fullmatch(name) for p in patterns):
                adapters[self.key(name)] = LowRankDomainAdapter(module, config.rank, len(config.domains))
                self.layer_names.append(name)
                self.groups[name] = layer_group(name)
                self._layers[name] = module
        if not adapters:
            raise ValueError("Domain Shifter target patterns match no Linear/Conv2d layer of the UNet")
        self.adapters = nn.ModuleDict(adapters)
        self._base_weights = {name: m.weight for name, m in self._layers.items()}
        self._fused: dict[str, dict[str, nn.Parameter]] = {}
        self._active: DomainCombo | None = None
        self._sample_domains: dict[str, torch.Tensor] | None = None
        self._hooks = [m.register_forward_hook(self._make_hook(n)) for n, m in self._layers.items()]
        self.mode: Literal["off", "fused", "unfused"] = "off"

    @staticmethod
    def key(module_name: str) -> str:
        return module_name.replace(".", "__")

    def adapter(self, module_name: str) -> LowRankDomainAdapter:
        return self.adapters[self.key(module_name)]  # type: ignore[return-value]

    # ---- unfused -----------------------------------------------------------------------------------
    def _make_hook(self, name: str):
        group = self.groups[name]

        def hook(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor | None:
            if self.mode != "unfused":
                return None
            if self._sample_domains is None:
                raise RuntimeError(
                    "unfused Domain Shifter needs set_sample_domains() before the forward pass"
                )
            idx = self._sample_domains[group]
            x = inputs[0]
            if idx.shape[0] != x.shape[0]:
                raise RuntimeError(f"{idx.shape[0]} sample domains for a batch of {x.shape[0]}")
            return output + self.adapter(name).branch(x, idx)

        return hook

    def set_sample_domains(self, combos: Sequence[DomainCombo], device: torch.device | None = None) -> None:
        """Unfused mode: one domain combination per sample of the next forward passes."""
        self._restore_base()
        self.mode = "unfused"
        self._sample_domains = {
            g: torch.tensor([self.domain_index[c[gi]] for c in combos], dtype=torch.long, device=device)
            for gi, g in enumerate(LAYER_GROUPS)
        }

    # ---- fused -------------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self, domains: Sequence[str] | None = None) -> None:
        """Compute W_d = W + B diag(e_d) A once per adapted layer and domain (idempotent)."""
        for d in domains or self.config.domains:
            i = self.domain_index[d]
            for name in self.layer_names:
                per_layer = self._fused.setdefault(name, {})
                if d in per_layer:
                    continue
                base = self._base_weights[name]
                delta = self.adapter(name).delta_weight(i).to(base.dtype)
                per_layer[d] = nn.Parameter((base + delta).detach(), requires_grad=False)

    def activate(self, combo: DomainCombo) -> None:
        """Fused mode: point every adapted layer at the weight of its group's domain (reference swap)."""
        if self.mode == "fused" and self._active == combo:
            return
        self.fuse(sorted(set(combo)))
        for name, module in self._layers.items():
            domain = combo[LAYER_GROUPS.index(self.groups[name])]
            module._parameters["weight"] = self._fused[name][domain]
        self.mode = "fused"
        self._active = combo

    def _restore_base(self) -> None:
        if self.mode == "fused":
            for name, module in self._layers.items():
                module._parameters["weight"] = self._base_weights[name]
        self._active = None

    def deactivate(self) -> None:
        """Run the bare base UNet (no adapter), e.g. to measure the adapters' cost."""
        self._restore_base()
        self.mode = "off"
        self._sample_domains = None

    def invalidate_fused(self) -> None:
        """Drop fused weights: after training changed weights, or after moving the UNet to another
        device or dtype (fused copies are not UNet parameters, so `.to()` does not move them)."""
        self._restore_base()
        self.mode = "off"
        self._fused.clear()

    # ---- accounting --------------------------------------------------------------------------------
    def adapted_weight_bytes(self) -> int:
        """Bytes of the base weights of all adapted layers: the cost of one more fused weight set."""
        return sum(w.numel() * w.element_size() for w in self._base_weights.values())

    def fused_weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for per in self._fused.values() for p in per.values())

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.adapters.state_dict().items()}

    def remove(self) -> None:
        """Detach from the UNet: restore base weights and drop the hooks."""
        self._restore_base()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.mode = "off"
