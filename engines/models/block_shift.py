"""The paper's Domain Shifter: a domain residual at the input of every block site.

At site k, `x~ = x + s_k(d)` with `s_k(d) = W_right,k W_left,k Embed_k(d)`, broadcast over positions;
x itself does not pass through the adapter. `W_right` starts at zero, so a fresh shifter is exactly
the base UNet.

- **unfused**: the chain `W_right(W_left(Embed(d)))` is computed in every call, for both domains, and
  indexed per sample (what training differentiates).
- **fused**: the table `s_k(d)` for every site and domain is computed once (`fuse()`, in fp32 whatever
  the model's dtype, rounded once to the activations' dtype when added); a call looks up
  each sample's row per site. The index (`domain_ids`, one column per site) is an input of the UNet
  call, so eager, torch.compile, ONNX and TensorRT need one graph per input shape for every step split,
  block split and mixed batch. Extra memory: the tables, `domains x sum(site widths)` numbers.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from engines.models.domain_shifter import DomainShifterBase
from engines.models.shifter_config import BlockShiftConfig, site_channels


class SiteShift(nn.Module):
    """One site's Embed (domains x embed_dim) -> W_left (rank) -> W_right (the block's input width)."""

    def __init__(self, channels: int, rank: int, embed_dim: int, num_domains: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_domains, embed_dim)
        self.left = nn.Linear(embed_dim, rank, bias=False)
        self.right = nn.Linear(rank, channels, bias=False)
        nn.init.zeros_(self.right.weight)

    def offsets(self) -> torch.Tensor:
        """(domains, channels): s(d) for every domain, in the parameters' dtype (what training uses)."""
        return self.right(self.left(self.embed.weight))

    def offsets_exact(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The same chain computed in float64 and rounded once to `dtype` (default: the parameters'):
        the same bits whatever the weights' memory layout (fp32 BLAS results can depend on alignment),
        and one rounding, not one per product of a half-precision chain. Differentiable."""
        e, a, b = (t.double() for t in (self.embed.weight, self.left.weight, self.right.weight))
        return ((e @ a.T) @ b.T).to(dtype or self.right.weight.dtype)


class ShiftedForward:
    """One site's shift, installed as the module's own `forward` (an instance attribute over the class's)
    rather than a forward pre-hook: a module with any hook leaves PyTorch's fast call path, and with 18
    hooked sites that dispatch alone cost ~2% of a 32 px UNet step on the CPU, measured against the bare
    UNet. `remove()` restores the class's forward; the module's parameters and names never change."""

    def __init__(self, module: nn.Module, shift) -> None:  # noqa: ANN001 - shift(module, args, kwargs)
        self.module = module

        def forward(m: nn.Module, *args, **kwargs):
            changed = shift(m, args, kwargs)
            if changed is not None:
                args, kwargs = changed
            return type(m).forward(m, *args, **kwargs)

        # Bound to the module; a deep copy of the UNet binds it to the copied module, but `shift` still
        # belongs to the original shifter: `DomainShifterBase.reattach` replaces it on a copy.
        module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


class BlockShift(DomainShifterBase):
    form = "block-shift"

    def __init__(self, config: BlockShiftConfig, unet: nn.Module) -> None:
        super().__init__(config, unet)
        modules = dict(unet.named_modules())
        self.channels = [site_channels(modules[s]) for s in self.sites]
        if config.tau_blocks is None:
            # Fixed once, so the saved config says exactly what stage 2 draws from.
            self.config = config = config.model_copy(update={"tau_blocks": len(self.sites) // 2})
        elif config.tau_blocks > len(self.sites):
            raise ValueError(f"tau_blocks {config.tau_blocks} > the model's {len(self.sites)} block sites")
        n_dom = len(config.domains)
        self.adapters = nn.ModuleDict(
            {
                self.key(s): SiteShift(c, config.rank, config.embed_dim, n_dom)
                for s, c in zip(self.sites, self.channels, strict=True)
            }
        )
        self._site_modules = [self.adapters[self.key(s)] for s in self.sites]
        self._tables: list[torch.Tensor] | None = None
        for s in self.sites:
            self._add_slot(s)
        self._attach(unet)

    def _attach(self, unet: nn.Module) -> None:
        modules = dict(unet.named_modules())
        self._hooks = [ShiftedForward(modules[s], self._make_shift(k)) for k, s in enumerate(self.sites)]

    @property
    def tau_blocks(self) -> int:
        return int(self.config.tau_blocks)  # type: ignore[arg-type]

    def site(self, k: int) -> SiteShift:
        return self._site_modules[k]  # type: ignore[return-value]

    def _make_shift(self, k: int):
        def shift(module: nn.Module, args: tuple, kwargs: dict):
            if self.mode == "off":
                return None
            if args:
                x = args[0]
            else:
                x = kwargs["hidden_states"]
            ids = self._ids_for(x.shape[0])[:, k]
            if self.mode == "fused":
                offset = self._tables[k][ids]  # type: ignore[index]
            else:  # the same chain the table holds, computed in this call (what training differentiates)
                offset = self.site(k).offsets_exact()[ids]
            shifted = x + offset.to(x.dtype)[:, :, None, None]
            if args:
                return (shifted, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": shifted}

        return shift

    def mixes_domains(self, fused: bool) -> bool:
        return True

    @torch.no_grad()
    def fuse(self) -> None:
        if self._tables is None:
            # fp32 tables (tiny: domains x channels per site), rounded once where a call adds them
            self._tables = [self.site(k).offsets_exact(torch.float32) for k in range(self.num_sites)]

    def activate(self, combo=None) -> None:  # noqa: ANN001 - combo is unused: domains come per sample
        self.fuse()
        self.mode = "fused"

    def set_unfused(self) -> None:
        self.mode = "unfused"

    def deactivate(self) -> None:
        self.mode = "off"

    def invalidate_fused(self) -> None:
        self._tables = None
        self.mode = "off"

    def fused_bytes(self) -> int:
        self.fuse()
        return sum(t.numel() * t.element_size() for t in self._tables)  # type: ignore[union-attr]

    def held_tensors(self) -> list[torch.Tensor]:
        return list(self._tables or [])
