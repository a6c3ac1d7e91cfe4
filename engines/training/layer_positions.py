"""Where each UNet parameter sits relative to the Domain Shifter's block sites, in forward order.

Stage 2's layer-aware rule freezes, for real samples, "the first i blocks". Parameters outside a site
are placed by when they run: conv_in and the time/camera embeddings before site 0, a down block's
downsampler after its last site, an up block's upsampler after its last site, the output head after
every site. A parameter is frozen for a real mini-batch with split `i` when its position is `< i`.
"""

from __future__ import annotations

import math
import re

_BLOCK = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.")


def parameter_positions(param_names: list[str], sites: list[str]) -> dict[str, float]:
    """Position of each UNet parameter name: its site index, or a half step after the last site that
    runs before it (-0.5 for what runs before every site; +inf for the output head)."""
    last_site_of_block: dict[str, int] = {}
    for k, s in enumerate(sites):
        m = _BLOCK.match(s + ".")
        if m:
            last_site_of_block[m.group(0)] = k
        elif s.startswith("mid_block."):
            last_site_of_block["mid_block."] = k
    out: dict[str, float] = {}
    for name in param_names:
        site = next((k for k, s in enumerate(sites) if name.startswith(s + ".")), None)
        if site is not None:
            out[name] = float(site)
            continue
        m = _BLOCK.match(name)
        prefix = m.group(0) if m else ("mid_block." if name.startswith("mid_block.") else None)
        if prefix is not None and prefix in last_site_of_block:
            out[name] = last_site_of_block[prefix] + 0.5
        elif name.startswith(("conv_norm_out", "conv_out")):
            out[name] = math.inf
        else:  # conv_in, time_embedding, class_embedding (camera), add_embedding...
            out[name] = -0.5
    return out


def frozen_before_site(positions: dict[str, float], i: int) -> list[str]:
    """The parameters a real mini-batch with split `i` must not train."""
    return [n for n, p in positions.items() if p < i]
