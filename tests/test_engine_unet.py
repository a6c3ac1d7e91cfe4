"""Multi-view UNet: attention across views, camera embedding, geometry channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from engines.models.multiview_attention import MultiViewAttnProcessor
from tests.fixtures.models import eager_unet, tiny_model
from tests.test_engine_domain_shifter import REAL, unet_inputs


@torch.no_grad()
def test_one_view_is_ordinary_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    x = torch.randn(3, 10, 32)
    attn.set_processor(MultiViewAttnProcessor(multiview=True))
    mv = attn(x, num_views=1)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    split = lambda t: t.view(3, 10, 4, 8).transpose(1, 2)  # noqa: E731
    ref = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(3, 10, 32)
    ref = attn.to_out[0](ref)
    assert torch.allclose(mv, ref, atol=1e-6)


@torch.no_grad()
def test_multiview_attention_joins_views_of_one_object_only():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    attn.set_processor(MultiViewAttnProcessor(multiview=True))
    x = torch.randn(4, 6, 16)  # 2 objects x 2 views
    base = attn(x, num_views=2)
    x2 = x.clone()
    x2[1] += 1.0  # change view 1 of object 0
    out = attn(x2, num_views=2)
    assert not torch.allclose(out[0], base[0])  # the other view of the same object sees it
    assert torch.allclose(out[2:], base[2:], atol=1e-6)  # the other object does not


@torch.no_grad()
def test_changing_one_view_changes_another_view_only_with_multiview_attention():
    for multiview in (True, False):
        model = tiny_model(seed=1, multiview=multiview)
        x = unet_inputs(model, n_objects=1, views=3)
        base = eager_unet(model, x, REAL)
        x.sample = x.sample.clone()
        x.sample[2] += 0.5
        out = eager_unet(model, x, REAL)
        changed = (out[0] - base[0]).abs().max().item()
        if multiview:
            assert changed > 1e-4
        else:
            assert changed < 1e-6


@torch.no_grad()
def test_camera_and_geometry_inputs_change_the_prediction():
    model = tiny_model(seed=2)
    x = unet_inputs(model, n_objects=1, views=2)
    base = eager_unet(model, x, REAL)
    x_cam = unet_inputs(model, n_objects=1, views=2)
    x_cam.cameras = x_cam.cameras + 1.0
    assert (eager_unet(model, x_cam, REAL) - base).abs().max().item() > 1e-4
    x_geo = unet_inputs(model, n_objects=1, views=2)
    x_geo.geometry = None  # empty control = zeros
    assert (eager_unet(model, x_geo, REAL) - base).abs().max().item() > 1e-4
