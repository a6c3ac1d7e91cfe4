"""Step caching for the UNet, DeepCache style (Ma et al., CVPR 2024): deep features change little from
one denoising step to the next, so most steps can reuse them.

A **full** step runs the whole UNet and also returns the *deep feature*: the input of the last layer
(resnet, and its attention where it has one) of the last up block, which everything but the shallowest
level produced. A **shallow** step runs only the time embedding, `conv_in` and that last layer, on the
cached deep feature and this step's `conv_in` output (the layer's skip connection), then the output
convolutions. What the shallow step computes uses this step's timestep, text, cameras and domain ids;
what it reuses was computed at the full step, under that step's domain assignment. Reusing it is only
correct while the assignment is the same (`DenoiseJob.step_kind` runs a step full when the schedule
switches a site's domain).

`split_forward` follows diffusers' `UNet2DConditionModel.forward` op for op on the paths our models use
(no ControlNet/adapter residuals, no added embeddings, no FreeU, no upsampler in the last up block), so a
full step's noise prediction is bit-identical to the plain forward (tested); `supports_step_cache` says
whether a UNet is one of those.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel


def supports_step_cache(unet: UNet2DConditionModel) -> bool:
    cfg = unet.config
    last = unet.up_blocks[-1]
    return (
        cfg.addition_embed_type is None
        and not cfg.class_embeddings_concat
        and not cfg.center_input_sample
        and last.upsamplers is None
        and not any(getattr(b, "s1", None) for b in unet.up_blocks)  # FreeU off
        # the last up block's last layer takes conv_in's output as its skip (every residual is consumed)
        and 1 + sum(len(b.resnets) + (b.downsamplers is not None) for b in unet.down_blocks)
        == sum(len(b.resnets) for b in unet.up_blocks)
    )


def _embedding(unet: UNet2DConditionModel, sample: torch.Tensor, timestep: torch.Tensor, class_labels):
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        emb = emb + class_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    return emb


def _last_layer(block, i: int, hidden, skip, emb, text, cross_attention_kwargs: dict[str, Any]):  # noqa: ANN001
    hidden = block.resnets[i](torch.cat([hidden, skip], dim=1), emb)
    attentions = getattr(block, "attentions", None)
    if attentions is not None:
        hidden = attentions[i](
            hidden,
            encoder_hidden_states=text,
            cross_attention_kwargs=cross_attention_kwargs,
            attention_mask=None,
            encoder_attention_mask=None,
            return_dict=False,
        )[0]
    return hidden


def _out(unet: UNet2DConditionModel, hidden: torch.Tensor) -> torch.Tensor:
    if unet.conv_norm_out:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)


def split_forward(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    class_labels: torch.Tensor | None,
    cross_attention_kwargs: dict[str, Any],
    deep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise prediction, deep feature). `deep=None`: a full step; else a shallow step on that feature
    (returned as it is)."""
    emb = _embedding(unet, sample, timestep, class_labels)
    sample = unet.conv_in(sample)
    last = unet.up_blocks[-1]
    n = len(last.resnets)
    if deep is not None:
        # the last layer's skip is the first residual: conv_in's output
        return _out(unet, _last_layer(last, n - 1, deep, sample, emb, text, cross_attention_kwargs)), deep
    up_factor = 2**unet.num_upsamplers
    forward_upsample_size = any(d % up_factor for d in sample.shape[-2:])
    upsample_size = None
    res_samples: tuple[torch.Tensor, ...] = (sample,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, res = block(
                hidden_states=sample,
                temb=emb,
                encoder_hidden_states=text,
                attention_mask=None,
                cross_attention_kwargs=cross_attention_kwargs,
                encoder_attention_mask=None,
            )
        else:
            sample, res = block(hidden_states=sample, temb=emb)
        res_samples += res
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(
                sample,
                emb,
                encoder_hidden_states=text,
                attention_mask=None,
                cross_attention_kwargs=cross_attention_kwargs,
                encoder_attention_mask=None,
            )
        else:
            sample = unet.mid_block(sample, emb)
    for block in unet.up_blocks[:-1]:
        res = res_samples[-len(block.resnets) :]
        res_samples = res_samples[: -len(block.resnets)]
        if forward_upsample_size:
            upsample_size = res_samples[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            sample = block(
                hidden_states=sample,
                temb=emb,
                res_hidden_states_tuple=res,
                encoder_hidden_states=text,
                cross_attention_kwargs=cross_attention_kwargs,
                upsample_size=upsample_size,
                attention_mask=None,
                encoder_attention_mask=None,
            )
        else:
            sample = block(
                hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size
            )
    # the last up block layer by layer, keeping the input of its last layer
    res = res_samples[-n:]
    for i in range(n - 1):
        sample = _last_layer(last, i, sample, res[-1 - i], emb, text, cross_attention_kwargs)
    deep = sample
    return _out(unet, _last_layer(last, n - 1, deep, res[0], emb, text, cross_attention_kwargs)), deep
