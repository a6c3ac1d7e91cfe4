"""Model folder: save/load round trip, clear errors naming the bad file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engines.errors import ModelFolderError
from engines.models.model_folder import load_model, save_model
from tests.fixtures.models import eager_unet, tiny_model
from tests.test_engine_domain_shifter import SYN, unet_inputs


@torch.no_grad()
def test_save_then_load_gives_identical_outputs(tmp_path):
    model = tiny_model(seed=5)
    x = unet_inputs(model)
    for form_model in (model, tiny_model(seed=5, form="lora")):
        before = eager_unet(form_model, x, SYN)  # saving must write base weights even while fused
        loaded = load_model(save_model(form_model, tmp_path / form_model.shifter.form))
        assert loaded.shifter.form == form_model.shifter.form
        assert torch.equal(eager_unet(loaded, x, SYN), before)
    assert torch.equal(loaded.text_encoder.encode(["a red cube"]), model.text_encoder.encode(["a red cube"]))


def test_folder_holds_only_safetensors_and_json(tiny_model_dir):
    files = [p for p in tiny_model_dir.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".json", ".safetensors"}
    for required in (
        "realiz3d.json",
        "unet/config.json",
        "domain_shifter/config.json",
        "scheduler/scheduler_config.json",
    ):
        assert (tiny_model_dir / required).is_file()


@pytest.mark.parametrize(
    "relpath",
    [
        "unet/diffusion_pytorch_model.safetensors",
        "domain_shifter/adapter.safetensors",
        "text_encoder/model.safetensors",
        "realiz3d.json",
        "scheduler/scheduler_config.json",
    ],
)
def test_missing_file_is_named_in_the_error(tiny_model_dir, tmp_path, relpath):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (folder / relpath).unlink()
    with pytest.raises(ModelFolderError, match=relpath.split("/")[-1].replace(".", r"\.")):
        load_model(folder)


def test_corrupt_weights_are_named_in_the_error(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    path = folder / "domain_shifter" / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFolderError, match="adapter.safetensors"):
        load_model(folder)


def test_inconsistent_config_is_named_in_the_error(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((folder / "realiz3d.json").read_text())
    cfg["geometry_channels"] = 0
    (folder / "realiz3d.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="in_channels"):
        load_model(folder)
    (folder / "realiz3d.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="realiz3d.json"):
        load_model(folder)


def test_adapter_weights_of_the_wrong_shape_are_rejected(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((folder / "domain_shifter" / "config.json").read_text())
    cfg["rank"] = cfg["rank"] + 1
    (folder / "domain_shifter" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="adapter.safetensors.*does not match"):
        load_model(folder)


def test_a_folder_is_replaced_whole_or_left_as_it_was(tmp_path):
    import pytest

    from engines.atomic_folder import replaced_folder

    target = tmp_path / "model"
    with replaced_folder(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), replaced_folder(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("the write failed")
    assert (target / "a.txt").read_text() == "first"  # the failed write left the old folder
    with replaced_folder(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or old folders left behind
