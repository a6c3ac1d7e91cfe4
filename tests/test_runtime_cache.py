"""Engine cache: keys, hits, corrupt/stale entries rebuilt, atomic concurrent builds across processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from engines.runtime.engine_cache import MANIFEST, EngineCache, cache_key

PARTS = {
    "base_weights": "abc",
    "combo": ["real", "real", "real"],
    "backend": "onnx",
    "shape": {"num_views": 4},
}


def write_artifact(payload: bytes, delay: float = 0.0):
    def build(tmp: Path) -> None:
        with open(tmp / "engine.bin", "wb") as f:  # written slowly: a reader must never see this half
            for i in range(0, len(payload), 1024):
                f.write(payload[i : i + 1024])
                if delay:
                    time.sleep(delay)

    return build


def test_second_build_is_a_hit_and_returns_the_same_entry(tmp_path):
    cache = EngineCache(tmp_path)
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        write_artifact(b"x" * 5000)(tmp)

    first = cache.get_or_build("onnx", "rrr", PARTS, build)
    second = cache.get_or_build("onnx", "rrr", PARTS, build)
    assert (first.hit, second.hit) == (False, True)
    assert first.path == second.path and len(calls) == 1
    assert second.file("engine.bin").read_bytes() == b"x" * 5000
    manifest = json.loads((second.path / MANIFEST).read_text())
    assert manifest["key"] == second.key and manifest["files"]["engine.bin"]["size"] == 5000


def test_key_changes_with_every_part_and_is_order_independent():
    base = cache_key(PARTS)
    assert cache_key(dict(reversed(list(PARTS.items())))) == base
    for k, v in {
        "base_weights": "abd",
        "combo": ["synthetic"] * 3,
        "backend": "tensorrt",
        "shape": {"num_views": 6},
    }.items():
        assert cache_key({**PARTS, k: v}) != base
    assert cache_key({**PARTS, "versions": {"torch": "2.13"}}) != base


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip_byte", "delete_manifest", "garbage_manifest", "wrong_key"],
)
def test_a_corrupt_or_stale_entry_is_rebuilt_not_loaded(tmp_path, damage):
    cache = EngineCache(tmp_path)
    entry = cache.get_or_build("onnx", "rrr", PARTS, write_artifact(b"good" * 1000))
    artifact, manifest = entry.file("engine.bin"), entry.path / MANIFEST
    if damage == "truncate":
        artifact.write_bytes(artifact.read_bytes()[:100])
    elif damage == "flip_byte":
        data = bytearray(artifact.read_bytes())
        data[10] ^= 0xFF
        artifact.write_bytes(bytes(data))
    elif damage == "delete_manifest":
        manifest.unlink()
    elif damage == "garbage_manifest":
        manifest.write_text("{not json")
    else:
        m = json.loads(manifest.read_text())
        m["key"] = "0" * 64
        manifest.write_text(json.dumps(m))
    assert cache.validate(entry.path, entry.key) is not None
    rebuilt = cache.get_or_build("onnx", "rrr", PARTS, write_artifact(b"good" * 1000))
    assert not rebuilt.hit
    assert rebuilt.file("engine.bin").read_bytes() == b"good" * 1000
    assert cache.get_or_build("onnx", "rrr", PARTS, write_artifact(b"other")).hit


def test_a_failed_build_leaves_no_entry_and_no_temp_dir(tmp_path):
    cache = EngineCache(tmp_path)

    def boom(tmp: Path) -> None:
        (tmp / "engine.bin").write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        cache.get_or_build("onnx", "rrr", PARTS, boom)
    assert [p.name for p in (tmp_path / "onnx").iterdir() if not p.name.endswith(".lock")] == []
    assert not cache.get_or_build("onnx", "rrr", PARTS, write_artifact(b"ok")).hit


def _build_in_process(root: str, start: float, out: mp.Queue) -> None:
    cache = EngineCache(root)
    calls = []

    def build(tmp: Path) -> None:
        calls.append(1)
        write_artifact(b"E" * 64 * 1024, delay=0.002)(tmp)  # ~0.13 s: the other process arrives mid-build

    time.sleep(max(0.0, start - time.time()))
    entry = cache.get_or_build("onnx", "rrr", PARTS, build)
    out.put(
        (entry.hit, len(calls), str(entry.path), entry.file("engine.bin").read_bytes() == b"E" * 64 * 1024)
    )


def test_two_processes_building_at_once_end_with_one_good_entry(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 2.0  # both processes past interpreter start-up before either builds
    procs = [ctx.Process(target=_build_in_process, args=(str(tmp_path), start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sorted(r[0] for r in results) == [False, True]  # one built, the other waited and hit
    assert sum(r[1] for r in results) == 1
    assert len({r[2] for r in results}) == 1 and all(r[3] for r in results)
    entries = [p for p in (tmp_path / "onnx").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    hit = EngineCache(tmp_path).lookup("onnx", "rrr", cache_key(PARTS))
    assert hit is not None and hit.path == entries[0]
