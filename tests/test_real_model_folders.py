"""Loading real (diffusers-style) model folders: sharded weights, legacy VAE keys, dtype at load, the VAE
scale factor, whole-mismatch errors, explicit cameras through cameras.json, and `train --init` on CLIP."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engines.errors import ModelFolderError
from engines.models.model_folder import load_model, save_model
from engines.pipelines import Realiz3DPipeline
from engines.requests import MultiviewRequest
from engines.sampling.cameras import Camera, cameras_from_json, cameras_to_json, texturing_cameras
from engines.types import DomainCombo
from service.cli import main
from tests.fixtures.texturing import psnr, textured_box_glb
from tests.fixtures.tiny_sd import vae_config


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _outputs(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        combo = DomainCombo("real", "synthetic", "real")
        model.shifter.activate(combo)
        ids = model.shifter.domain_ids([combo] * 2)
        unet = model.unet(
            x, torch.tensor([10, 900]), torch.randn(2, 16, 32, generator=g), torch.randn(2, 16), None, ids
        )
        image = model.vae.decode(x[:1]).sample
    return unet, image


def test_sharded_unet_and_legacy_vae_keys_load_like_the_plain_folder(tiny_sd_model_dir, tmp_path):
    folder = _copy(tiny_sd_model_dir, tmp_path / "m")
    unet_dir = folder / "unet"
    state = load_file(str(unet_dir / "diffusion_pytorch_model.safetensors"))
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    names = sorted(state)
    shards = {f"diffusion_pytorch_model-0000{i + 1}-of-00003.safetensors": names[i::3] for i in range(3)}
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, str(unet_dir / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (unet_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    vae_state = load_file(str(vae_file))
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in vae_state.items():
        for new, old in legacy.items():
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        renamed[k] = v
    assert renamed.keys() != vae_state.keys()
    save_file(renamed, str(vae_file))

    for got, want in zip(_outputs(load_model(folder)), _outputs(load_model(tiny_sd_model_dir)), strict=True):
        assert torch.equal(got, want)

    # A shard that does not hold what the index says is named, with the first differing key.
    index["weight_map"][names[0]] = "diffusion_pytorch_model-00002-of-00003.safetensors"
    (unet_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="00001-of-00003.safetensors: does not match"):
        load_model(folder)


def test_weights_are_loaded_in_the_requested_dtype(tiny_sd_model_dir):
    model = load_model(tiny_sd_model_dir, dtype=torch.bfloat16)
    for module in (model.unet, model.vae, model.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.unet.parameters())


def test_a_mismatched_file_is_named_with_its_whole_first_mismatch(tiny_sd_model_dir, tmp_path):
    folder = _copy(tiny_sd_model_dir, tmp_path / "m")
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["conv_in.weight"] = state["conv_in.weight"][:, :4].contiguous()  # an un-widened SD conv_in
    save_file(state, str(path))
    with pytest.raises(ModelFolderError) as err:
        load_model(folder)
    message = str(err.value)
    assert str(path) in message
    assert "key 'conv_in.weight' has shape (32, 4, 3, 3) in the file, (32, 11, 3, 3) in the model" in message
    pickled = folder / "vae" / "diffusion_pytorch_model.bin"
    (folder / "vae" / "diffusion_pytorch_model.safetensors").rename(pickled)
    state["conv_in.weight"] = torch.cat([state["conv_in.weight"], torch.zeros(32, 7, 3, 3)], 1)
    save_file(state, str(path))
    with pytest.raises(
        ModelFolderError, match="diffusion_pytorch_model.bin is a pickle, which is never loaded"
    ):
        load_model(folder)


def test_the_vae_scale_factor_comes_from_the_vae_and_sets_the_image_size(tiny_sd_model_dir, tmp_path):
    from diffusers import AutoencoderKL

    folder = _copy(tiny_sd_model_dir, tmp_path / "m")
    shutil.rmtree(folder / "vae")
    AutoencoderKL(**vae_config(blocks=2)).save_pretrained(folder / "vae", safe_serialization=True)  # 2x
    with pytest.raises(ModelFolderError, match="downsamples 2x .* realiz3d.json says vae_scale_factor 8"):
        load_model(folder)
    cfg = json.loads((folder / "realiz3d.json").read_text())
    cfg.update(vae_scale_factor=2, resolution=16)
    (folder / "realiz3d.json").write_text(json.dumps(cfg))
    pipe = Realiz3DPipeline.load(folder)
    result = pipe.multiview(MultiviewRequest(prompt="a cup", num_views=2, steps=1, seed=0))
    assert result.images[0].shape == (16, 16, 3) and result.meta["resolution"] == 16


def test_explicit_cameras_round_trip_through_cameras_json_and_bake_uses_them(tmp_path):
    # Off-origin cameras (translated, so they do not look at the origin): a user's own renders.
    explicit = []
    for cam in texturing_cameras(6):
        m = cam.camera_to_world()
        m[:3, 3] += [0.08, -0.05, 0.06]
        explicit.append(Camera.from_matrix(m, 38.0))
    doc = cameras_to_json(explicit, 128)
    assert all("azimuth_deg" not in c for c in doc["cameras"])
    back, res = cameras_from_json(json.loads(json.dumps(doc)))
    assert res == 128 and back == explicit

    glb = tmp_path / "box.glb"
    glb.write_bytes(textured_box_glb(128))
    (tmp_path / "cameras.json").write_text(json.dumps(doc))
    views = tmp_path / "views"
    args = ["render", str(glb), "--cameras", str(tmp_path / "cameras.json"), "--resolution", "128", "--unlit"]
    assert main([*args, "--out", str(views)]) == 0
    rendered, _ = cameras_from_json(json.loads((views / "cameras.json").read_text()))
    assert rendered == explicit
    baked = tmp_path / "baked"
    bake = ["bake", str(glb), "--views", str(views), "--cameras", str(views / "cameras.json")]
    assert main([*bake, "--atlas", "128", "--out", str(baked)]) == 0
    from PIL import Image

    from engines.texturing.mesh_io import load_mesh

    atlas = np.asarray(Image.open(baked / "texture.png").convert("RGB"))
    assert psnr(atlas[72:120, 6:36], load_mesh(glb).texture[72:120, 6:36]) > 30
    # The same views baked with orbit cameras (the poses the renders were NOT made from) come out wrong.
    (tmp_path / "orbit.json").write_text(json.dumps(cameras_to_json(texturing_cameras(6), 128)))
    wrong = tmp_path / "wrong"
    bake[-1] = str(tmp_path / "orbit.json")
    assert main([*bake, "--atlas", "128", "--out", str(wrong)]) == 0
    atlas_wrong = np.asarray(Image.open(wrong / "texture.png").convert("RGB"))
    assert psnr(atlas_wrong[72:120, 6:36], load_mesh(glb).texture[72:120, 6:36]) < psnr(
        atlas[72:120, 6:36], load_mesh(glb).texture[72:120, 6:36]
    )


def test_clip_models_save_and_load_again(tiny_sd_model_dir, tmp_path):
    model = load_model(tiny_sd_model_dir)
    again = load_model(save_model(model, tmp_path / "again"))
    assert torch.equal(again.text_encoder.encode(["a red cube"]), model.text_encoder.encode(["a red cube"]))
    names = dict(model.text_encoder.named_parameters())  # `train --init` collects parameters like this
    assert names and all(not p.requires_grad for p in names.values())


def test_train_init_on_a_latent_clip_model_checks_its_data_folder(tiny_sd_model_dir, tmp_path, capsys):
    # Training latent models on a DATA_DIR: tests/test_training_own_data.py.
    args = [
        "train",
        "--init",
        str(tiny_sd_model_dir),
        "--data",
        str(tmp_path),
        "--steps",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert "not a data set (no dataset.json" in capsys.readouterr().err
