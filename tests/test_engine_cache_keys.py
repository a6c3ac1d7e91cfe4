"""The engine cache key is a pure function of the artifact's inputs: the same in every process.

diffusers' UNet config carries `_use_default_values`, a list whose order follows Python's per-process
string hashing; a key hashed from it was a per-process random number, so no process ever found another's
entry. These tests run REAL subprocesses with different PYTHONHASHSEED values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.runtime.engine_cache import cache_key, canonical, canonical_hash

ROOT = Path(__file__).resolve().parents[1]

#: one process: the model's fingerprint, the ONNX graph key of its default shape, then the graph itself
#: (found or exported) and what the cache counted
PROBE = """
import json, sys
from engines.models.model_folder import load_model
from engines.runtime import engine_cache
from engines.runtime.onnx_runner import OnnxRunner

model = load_model(sys.argv[1]).eval()
runner = OnnxRunner(model, cache_dir=sys.argv[2], num_views=2)
shape = runner.default_shape()
print(json.dumps({
    "fingerprint": runner.fingerprint,
    "key": engine_cache.cache_key(runner.key_parts(None, shape)),
    "use_default_values": model.unet.unet.config.get("_use_default_values"),
    "build": sys.argv[3] == "build",
}))
if sys.argv[3] == "build":
    entry = runner.graph(None, shape)
    print(json.dumps({"entry": entry.path.name, "hit": entry.hit, "stats": engine_cache.STATS.snapshot()}))
"""


def probe(model_dir: Path, cache: Path, seed: int, build: bool) -> list[dict]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "OMP_NUM_THREADS": "1"}
    env.pop("REALIZ3D_ENGINE_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_dir), str(cache), "build" if build else "key"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_two_processes_with_different_hash_seeds_compute_the_same_key(tiny_model_dir, tmp_path):
    runs = [probe(tiny_model_dir, tmp_path, seed, build=False)[0] for seed in (1, 2, 3)]
    # the premise: diffusers' private list really is ordered differently per process
    orders = {tuple(r["use_default_values"] or ()) for r in runs}
    assert len(orders) > 1, "the hash seeds did not reorder _use_default_values; the test proves nothing"
    assert len({json.dumps(r["fingerprint"], sort_keys=True) for r in runs}) == 1, runs
    assert len({r["key"] for r in runs}) == 1, [r["key"] for r in runs]


def test_a_second_process_finds_the_first_ones_graph_no_export(tiny_model_dir, tmp_path):
    (_, first) = probe(tiny_model_dir, tmp_path, 11, build=True)
    (_, second) = probe(tiny_model_dir, tmp_path, 12, build=True)
    assert first["hit"] is False and first["stats"]["onnx"] == {
        "hits": 0,
        "misses": 1,
        "builds": 1,
        "stale": 0,
    }
    assert second["hit"] is True and second["entry"] == first["entry"]
    assert second["stats"]["onnx"] == {"hits": 1, "misses": 0, "builds": 0, "stale": 0}
    assert len(list(tmp_path.rglob("unet.onnx"))) == 1


def test_canonical_form_drops_private_fields_sorts_and_rejects_objects():
    a = {"b": (1, 2), "a": {"y": 1.5, "x": None}, "_use_default_values": ["p", "q"], "_class_name": "U"}
    b = {"_use_default_values": ["q", "p"], "a": {"x": None, "y": 1.5}, "b": [1, 2]}
    assert canonical(a) == {"a": {"x": None, "y": 1.5}, "b": [1, 2]}
    assert canonical_hash(a) == canonical_hash(b)
    assert canonical_hash({**a, "b": [2, 1]}) != canonical_hash(a)  # list order is meaning, kept
    assert canonical({"p": Path("/m"), "t": True}) == {"p": "/m", "t": True}
    with pytest.raises(TypeError, match="object"):
        canonical({"f": object()})
    with pytest.raises(TypeError):
        canonical({1: "non-string key"})
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})
    # cache_key takes the same canonical form (the parts of a key are ours, but tuples stay lists)
    assert cache_key({"profile": (1, 2, 3)}) == cache_key({"profile": [1, 2, 3]})
