"""Resumable checkpoints: a model folder + optimizer state and EMA weights in safetensors + a step json.

    checkpoint/model/               engines.models.model_folder.save_model (the raw, non-EMA weights)
    checkpoint/optimizer.safetensors  AdamW moments, keyed "<param index>.<name>"
    checkpoint/ema.safetensors        exponential moving average of the trainable parameters
    checkpoint/state.json             step, stage, optimizer param_groups, training config
Writes go to a temp folder renamed into place, so a killed run leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engines.atomic_folder import replaced_folder
from engines.models.model_folder import load_model, save_model
from engines.models.realiz3d_model import Realiz3DModel


def save_checkpoint(
    folder: Path,
    model: Realiz3DModel,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor],
    state: dict,
) -> None:
    with replaced_folder(folder) as tmp:
        save_model(model, tmp / "model")
        opt = optimizer.state_dict()
        tensors = {}
        for idx, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"{idx}.{k}"] = torch.as_tensor(v).detach().contiguous().clone()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "param_groups": opt["param_groups"]}, indent=2))


def load_checkpoint(folder: Path) -> tuple[Realiz3DModel, dict, dict[str, torch.Tensor], dict]:
    """(model, optimizer state_dict, ema, state)."""
    state = json.loads((folder / "state.json").read_text())
    model = load_model(folder / "model")
    flat = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict[int, dict] = {}
    for key, v in flat.items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = v
    optimizer_state = {"state": opt_state, "param_groups": state.pop("param_groups")}
    ema = load_file(str(folder / "ema.safetensors"))
    return model, optimizer_state, ema, state
