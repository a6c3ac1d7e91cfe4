"""Multi-view self-attention (MVDream): all views of one object attend to each other jointly.

The UNet sees a batch of `batch * views` images, views of one object contiguous. Inside each self-attention
the token sequences are regrouped `(batch*views, tokens, ch) -> (batch, views*tokens, ch)`, attended, and
split back. With one view this is exactly ordinary attention; cross-attention (to the text) stays per view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


class MultiViewAttnProcessor:
    """Attention processor for diffusers' `Attention`; `num_views` arrives via cross_attention_kwargs."""

    def __init__(self, multiview: bool = True) -> None:
        self.multiview = multiview

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("attention masks are not supported by the multi-view processor")
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_self = encoder_hidden_states is None
        context = hidden_states if is_self else encoder_hidden_states
        if not is_self and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)

        n, tokens, inner = query.shape
        group = num_views if (is_self and self.multiview and num_views > 1) else 1
        if n % group:
            raise ValueError(f"batch of {n} images is not a whole number of {group}-view objects")
        heads = attn.heads
        head_dim = inner // heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            # (n, t, inner) -> (n / group, heads, group * t, head_dim): views of one object share a sequence
            return x.reshape(-1, group * x.shape[1], heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split_heads(query), split_heads(key), split_heads(value))
        out = out.transpose(1, 2).reshape(n, tokens, inner).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))

        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_multiview_attention(unet: torch.nn.Module, multiview: bool = True) -> None:
    """Use the multi-view processor for every attention layer (self- and cross-attention)."""
    unet.set_attn_processor(MultiViewAttnProcessor(multiview=multiview))
