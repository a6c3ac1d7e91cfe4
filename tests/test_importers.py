"""`realiz3d import sd|mvdream`: exact parity with the source model, exact MVDream round trip, safe loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from engines.errors import ModelFolderError
from engines.importers.mvdream import import_mvdream, load_checkpoint
from engines.importers.sd import import_sd
from engines.models.model_folder import load_model
from engines.sampling.cameras import Camera, camera_embeddings, orbit_cameras
from engines.types import DomainCombo
from service.cli import main
from tests.fixtures.tiny_sd import (
    TEXT_DIM,
    clip_to_open_clip,
    diffusers_unet_to_ldm,
    diffusers_vae_to_ldm,
    unet_config,
    vae_config,
)

COMBOS = [
    DomainCombo("real", "real", "real"),
    DomainCombo("synthetic", "synthetic", "synthetic"),
    DomainCombo("synthetic", "real", "synthetic", 6),
]


@pytest.fixture(scope="module")
def sd_folder(tiny_sd_dir) -> Path:
    return tiny_sd_dir  # sharded UNet, legacy VAE attention keys


@pytest.fixture(scope="module")
def imported(tiny_sd_model_dir) -> Path:
    return tiny_sd_model_dir  # import_sd(tiny_sd_dir); the CLI itself is run by the MVDream test and below


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, 8, 8, generator=g),
        torch.tensor([999, 400][:batch]),
        torch.randn(batch, 16, TEXT_DIM, generator=g),
        torch.randn(batch, 16, generator=g),
    )


@torch.no_grad()
def test_imported_unet_equals_the_original_for_one_view_without_geometry(sd_folder, imported):
    original = UNet2DConditionModel.from_pretrained(sd_folder / "unet").eval()
    model = load_model(imported)
    sample, t, text, cameras = _inputs()
    want = original(sample, t, encoder_hidden_states=text).sample
    assert want.abs().max() > 0.1  # a real, non-trivial reference
    assert model.shifter.form == "block-shift"
    for combo in COMBOS:
        model.shifter.activate(combo)
        ids = model.shifter.domain_ids([combo] * len(sample))
        got = model.unet(sample, t, text, cameras, None, ids, num_views=1)
        assert (got - want).abs().max().item() <= 1e-6, combo
    model.shifter.set_unfused()
    ids = model.shifter.domain_ids([COMBOS[0], COMBOS[1]])
    got = model.unet(sample, t, text, cameras, None, ids, num_views=1)
    assert (got - want).abs().max().item() <= 1e-6


def test_import_writes_the_models_own_schedule_resolution_and_clip(sd_folder, imported):
    model = load_model(imported)
    cfg = model.config
    assert (cfg.latent_space, cfg.vae_scale_factor, cfg.resolution, cfg.num_views) == ("vae", 8, 64, 4)
    assert cfg.geometry_channels == 7 and cfg.multiview_attention and cfg.text_encoder.kind == "clip"
    source = json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    assert model.scheduler_config == source
    unet = model.unet.unet
    assert unet.conv_in.weight.shape[1] == 4 + 7 and torch.all(unet.conv_in.weight[:, 4:] == 0)
    assert torch.all(unet.class_embedding.linear_2.weight == 0)
    # The camera embedding learns: its first layer is not dead.
    assert unet.class_embedding.linear_1.weight.abs().sum() > 0
    from transformers import CLIPTextModel

    clip = CLIPTextModel.from_pretrained(sd_folder / "text_encoder").eval()
    ids = model.text_encoder.tokenizer(["a red cube"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model.text_encoder.encode(["a red cube"]), clip(ids)[0])


def test_import_cli_reports_and_refuses_to_overwrite_other_folders(sd_folder, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["import", "sd", str(sd_folder), "--out", str(out), "--name", "mine", "--views", "2"]) == 0
    assert "peak RSS" in capsys.readouterr().out
    assert json.loads((out / "realiz3d.json").read_text())["num_views"] == 2
    (tmp_path / "notes").mkdir()
    assert main(["import", "sd", str(sd_folder), "--out", str(tmp_path / "notes")]) == 2
    assert "not a model folder; not overwriting it" in capsys.readouterr().err


def test_import_refuses_folders_it_cannot_adapt(sd_folder, tmp_path):
    with pytest.raises(ModelFolderError, match="vae: missing"):
        broken = tmp_path / "broken"
        broken.mkdir()
        for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
            (broken / part).symlink_to(sd_folder / part)
        import_sd(broken, tmp_path / "out")
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (sdxl / part).symlink_to(sd_folder / part)
    (sdxl / "unet").mkdir()
    (sdxl / "unet" / "config.json").write_text(
        json.dumps({**unet_config(), "addition_embed_type": "text_time"})
    )
    with pytest.raises(ModelFolderError, match="addition_embed_type"):
        import_sd(sdxl, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


# ---- MVDream -------------------------------------------------------------------------------------------
def _mvdream_unet(seed: int = 3) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **unet_config(), class_embed_type="projection", projection_class_embeddings_input_dim=16
    )
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.05)
    return unet.eval()


@pytest.fixture(scope="module")
def mvdream_ckpt(sd_folder, tmp_path_factory) -> tuple[Path, UNet2DConditionModel, dict]:
    """An LDM-format MVDream-like checkpoint: UNet with camera_embed, and an OpenCLIP text encoder."""
    from transformers import CLIPTextModel

    unet = _mvdream_unet()
    ckpt = diffusers_unet_to_ldm(unet.state_dict(), unet_config())
    assert "model.diffusion_model.camera_embed.0.weight" in ckpt
    clip = CLIPTextModel.from_pretrained(sd_folder / "text_encoder")
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(0.01)
    ckpt.update(clip_to_open_clip(clip.state_dict()))
    vae = AutoencoderKL.from_pretrained(sd_folder / "vae")
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.02)
    ckpt.update(diffusers_vae_to_ldm(vae.state_dict(), vae_config()))
    path = tmp_path_factory.mktemp("mvdream") / "sd-v2.1-base-4view.pt"
    torch.save({"state_dict": ckpt}, path)
    return path, unet, clip.state_dict(), vae.state_dict()


def test_mvdream_import_round_trips_exactly(mvdream_ckpt, sd_folder, tmp_path):
    path, unet, clip_state, vae_state = mvdream_ckpt
    out = tmp_path / "mvdream"
    assert main(["import", "mvdream", str(path), "--sd-folder", str(sd_folder), "--out", str(out)]) == 0
    model = load_model(out)
    assert model.config.camera.convention == "mvdream" and model.config.resolution == 256
    got = model.unet.unet.state_dict()
    want = unet.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        if k == "conv_in.weight":
            assert torch.equal(got[k][:, :4], v) and torch.all(got[k][:, 4:] == 0)
        else:
            assert torch.equal(got[k], v), k
    te = model.text_encoder.model.state_dict()
    for k, v in clip_state.items():
        assert torch.equal(te[k], v), k
    vae = model.vae.state_dict()
    assert set(vae) == set(vae_state)
    for k, v in vae_state.items():
        assert torch.equal(vae[k], v), k

    # Same outputs as the MVDream UNet fed MVDream's own cameras, at any radius.
    sample, t, text, _ = _inputs(batch=4)
    cams = orbit_cameras(4, elevation_deg=15.0, radius=3.7)
    theirs = torch.from_numpy(np.stack([_mvdream_camera(c.elevation_deg, c.azimuth_deg) for c in cams]))
    with torch.no_grad():
        want_out = unet(
            sample, t.repeat(2), encoder_hidden_states=text, class_labels=theirs.float()
        ).sample  # one view per call here: MVDream's 3D attention with num_frames=1
        model.shifter.activate(COMBOS[0])
        ids = model.shifter.domain_ids([COMBOS[0]] * len(sample))
        ours = torch.from_numpy(camera_embeddings(cams, model.config.camera.convention))
        got_out = model.unet(sample, t.repeat(2), text, ours, None, ids, num_views=1)
    assert (got_out - want_out).abs().max().item() <= 1e-5


def _mvdream_camera(elevation: float, azimuth: float) -> np.ndarray:
    """MVDream's camera_utils.get_camera for one view (unit distance, converted to its Z-up world)."""
    el, az = np.radians(elevation), np.radians(azimuth)
    pos = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    forward = -pos / np.linalg.norm(pos)
    right = np.cross(forward, [0, 1, 0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([right, up, -forward]).T
    c2w[:3, 3] = pos
    flip_yz = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    return (flip_yz @ c2w).astype(np.float32).reshape(16)


def test_mvdream_camera_conversion_is_exact_at_any_radius():
    for radius in (0.5, 1.0, 2.2, 7.0):
        for az, el in ((0, 15), (90, 15), (217, -30), (45, 80)):
            ours = Camera(az, el, radius).embedding("mvdream")
            assert np.abs(ours - _mvdream_camera(el, az)).max() < 1e-6, (radius, az, el)
    # The realiz3d convention is the matrix itself.
    cam = Camera(30, 10, 2.2)
    assert np.array_equal(cam.embedding("realiz3d"), cam.camera_to_world().astype(np.float32).reshape(16))


def test_checkpoints_load_without_running_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    bad = tmp_path / "evil.ckpt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(ModelFolderError, match="not a loadable tensor checkpoint"):
        load_checkpoint(bad)
    from safetensors.torch import save_file

    good = tmp_path / "w.safetensors"
    save_file({"model.diffusion_model.x": torch.ones(2)}, str(good))
    assert set(load_checkpoint(good)) == {"model.diffusion_model.x"}


def test_mvdream_import_rejects_a_plain_sd_checkpoint(sd_folder, tmp_path):
    unet = UNet2DConditionModel(**unet_config())
    path = tmp_path / "plain.pt"
    torch.save(diffusers_unet_to_ldm(unet.state_dict(), unet_config()), path)
    with pytest.raises(ModelFolderError, match="not an MVDream checkpoint"):
        import_mvdream(path, sd_folder, tmp_path / "out")
