"""Reading weights the diffusers way: single or sharded safetensors, meta-device modules, dtype at load.

- `read_state_dict(folder, stem)`: `stem.safetensors`, or the shards listed in `stem.safetensors.index.json`
  (diffusers' and transformers' `weight_map` format). Safetensors only: never pickle.
- `build_on_meta(factory)`: the module is built on the meta device (no memory, no random init), so loading
  holds one copy of the weights, not two.
- `assign_weights(module, state, path, dtype)`: the loaded tensors become the module's parameters
  (`load_state_dict(assign=True)`), cast to `dtype` tensor by tensor. A mismatch raises `ModelFolderError`
  naming the file and showing the whole first mismatch (missing, unexpected or wrong-shaped key).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file
from torch import nn

from engines.errors import ModelFolderError

_M = TypeVar("_M", bound=nn.Module)


def weights_path(folder: Path, stem: str) -> Path:
    """The file that names the weights: `stem.safetensors` or its sharded index."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file() or not index.is_file():
        return single
    return index


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        pickled = path.with_suffix(".bin")
        if pickled.is_file():
            raise ModelFolderError(
                f"{path}: missing; {pickled.name} is a pickle, which is never loaded (save it as safetensors)"
            )
        raise ModelFolderError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise ModelFolderError(f"{path}: unreadable safetensors ({e})") from None


def read_state_dict(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    """Every tensor of `folder/stem.safetensors`, or of the shards its index lists."""
    path = weights_path(folder, stem)
    if not path.name.endswith(".index.json"):
        return _load_file(path)
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError("empty weight_map")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFolderError(f"{path}: not a sharded-weights index ({e})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:
            raise ModelFolderError(f"{path}: shard {shard!r} must be a file name in {folder}")
        tensors = _load_file(folder / shard)
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(tensors) != listed:
            extra = sorted(set(tensors) ^ listed)[0]
            raise ModelFolderError(
                f"{folder / shard}: does not match {path.name} (first difference: {extra!r})"
            )
        state.update(tensors)
    return state


def build_on_meta(factory: Callable[[], _M]) -> _M:
    """Build a module without allocating or initialising its weights."""
    with torch.device("meta"):
        return factory()


def describe_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The first difference between a module's state and a state dict, in full; None if they match."""
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    if missing:
        return f"missing key {missing[0]!r} ({len(missing)} missing in all)"
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        return f"unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)"
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            return f"key {k!r} has shape {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
    return None


def assign_weights(
    module: _M, state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None
) -> _M:
    """Make `state` the module's parameters and buffers (strict); floating tensors cast to `dtype`."""
    problem = describe_mismatch(module, state)
    if problem is not None:
        raise ModelFolderError(f"{path}: does not match its config: {problem}")
    if dtype is not None:
        for k, v in state.items():
            if v.is_floating_point() and v.dtype != dtype:
                state[k] = v.to(dtype)
    module.load_state_dict(state, strict=True, assign=True)
    # A non-persistent buffer is in no file: on a meta-built module it would stay meta.
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            raise ModelFolderError(f"{path}: the model's buffer {name!r} is not in the file")
    return module
