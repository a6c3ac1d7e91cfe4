"""Engine cache: keys, hits, corrupt/stale entries rebuilt, atomic concurrent builds across processes; one
root rule; stale entries never loaded and said; counted (Prometheus); `realiz3d engines list|prune`."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import re
import time
from pathlib import Path

import pytest

from engines.runtime import cache_admin, engine_cache
from engines.runtime.engine_cache import (
    MANIFEST,
    CacheStats,
    EngineCache,
    cache_key,
    cache_root,
    library_versions,
)
from service.cli import main

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


# ---- one root, stale entries, counting, engines list|prune ---------------------------------------------


def test_one_cache_root_rule_flag_then_env_then_home_then_user_cache(monkeypatch, tmp_path):
    from service.commands.engines import engine_cache_dir

    monkeypatch.delenv("REALIZ3D_ENGINE_CACHE_DIR", raising=False)
    monkeypatch.delenv("REALIZ3D_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == engine_cache_dir(None) == tmp_path / "xdg" / "realiz3d" / "engines"
    monkeypatch.setenv("REALIZ3D_HOME", str(tmp_path / "home"))
    assert cache_root() == engine_cache_dir(None) == tmp_path / "home" / "engines"
    monkeypatch.setenv("REALIZ3D_ENGINE_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == engine_cache_dir(None) == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == engine_cache_dir(tmp_path / "flag") == tmp_path / "flag"
    # the worker's and the embedded server's root: the same rule through Settings
    from service.settings import Settings

    assert EngineCache(Settings().engine_cache_dir).root == tmp_path / "env"
    monkeypatch.setenv("REALIZ3D_ENGINE_CACHE_DIR", "")  # empty = unset (a chart may render it so)
    assert EngineCache(Settings().engine_cache_dir).root == tmp_path / "home" / "engines"
    # a relative folder is resolved once, against the directory it was given in
    monkeypatch.chdir(tmp_path)
    assert cache_root("rel") == tmp_path / "rel"


def _entry(cache: EngineCache, label: str, versions: dict[str, str], payload: bytes = b"g" * 2048):
    parts = {**PARTS, "versions": versions, "shape": {"num_views": 4, "height": 32, "width": 32}}
    return cache.get_or_build("onnx", label, parts, write_artifact(payload), info={"model": "tiny"})


def test_entries_of_other_library_versions_are_never_loaded_and_said_stale(tmp_path, monkeypatch, caplog):
    stats = CacheStats()
    old = {**library_versions(), "torch": "2.0.0"}
    _entry(EngineCache(tmp_path, stats), "domains-v4-32x32", old)  # written by an older torch
    cache = EngineCache(tmp_path, stats)  # this install
    with caplog.at_level(logging.WARNING, logger="engines.runtime.engine_cache"):
        now = _entry(cache, "domains-v4-32x32", library_versions())
    assert not now.hit  # the old entry was not loaded: a miss, then a build
    assert stats.snapshot()["onnx"] == {"hits": 0, "misses": 2, "builds": 2, "stale": 1}
    (record,) = [r for r in caplog.records if "stale" in r.getMessage()]
    assert f"torch 2.0.0 (now {library_versions()['torch']})" in record.getMessage()
    assert "engines prune --stale" in record.getMessage()
    # and a copy of the old entry under this install's key is refused by its manifest, not loaded
    assert _entry(cache, "domains-v4-32x32", library_versions()).hit
    items = {i.path: i for i in cache_admin.scan(tmp_path)}
    assert sorted(i.stale is None for i in items.values()) == [False, True]


def _cache_with_entries(root: Path) -> dict[str, Path]:
    cache = EngineCache(root, CacheStats())
    ours = library_versions()
    paths = {
        "current": _entry(cache, "domains-v4-32x32", ours).path,
        "old_torch": _entry(cache, "domains-v2-32x32", {**ours, "torch": "2.0.0"}).path,
        "big": _entry(cache, "domains-v8-32x32", ours, b"B" * 200_000).path,
    }
    # a format-1 entry (before canonical keys): its manifest has no cache_format
    fmt1 = _entry(cache, "domains-v1-32x32", ours).path
    manifest = json.loads((fmt1 / MANIFEST).read_text())
    del manifest["cache_format"]
    (fmt1 / MANIFEST).write_text(json.dumps(manifest))
    paths["format1"] = fmt1
    timing = root / "tensorrt" / "timing-trt9.9.9-0123456789abcdef0123456789abcdef.cache"
    timing.parent.mkdir(parents=True)
    timing.write_bytes(b"t" * 100)
    paths["old_timing"] = timing
    return paths


def test_engines_list_shows_model_shape_precision_versions_size_last_use_and_stale(tmp_path, capsys):
    paths = _cache_with_entries(tmp_path)
    old = time.time() - 3 * 86400
    os.utime(paths["big"], (old, old))
    assert main(["engines", "list", "--engine-cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, *rows, total = out.strip().splitlines()
    assert header.split() == [
        "BACKEND",
        "ENTRY",
        "MODEL",
        "SHAPE",
        "KIND",
        "PRECISION",
        "VERSIONS",
        "SIZE",
        "LAST",
        "USED",
        "STATE",
    ]
    row = {name: next(r for r in rows if p.name in r) for name, p in paths.items()}
    assert "tiny" in row["current"] and "4v 32x32" in row["current"] and row["current"].endswith("ok")
    assert f"torch={library_versions()['torch']}" in row["current"]
    assert "stale: built with torch 2.0.0" in row["old_torch"]
    assert "stale: cache format 1" in row["format1"]
    assert "stale: TensorRT 9.9.9" in row["old_timing"]
    assert re.search(r" 19[56]\.\d KiB ", row["big"]) and "3.0d ago" in row["big"]  # files + manifest
    assert total.startswith("5 entries") and "(3 stale)" in total
    assert main(["engines", "list", "--json", "--engine-cache", str(tmp_path)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {Path(i["path"]) for i in listed} == set(paths.values())


def test_engines_prune_stale_age_and_size(tmp_path, capsys):
    paths = _cache_with_entries(tmp_path)
    assert main(["engines", "prune", "--stale", "--dry-run", "--engine-cache", str(tmp_path)]) == 0
    assert "would remove 3 entries" in capsys.readouterr().out
    assert all(p.exists() for p in paths.values())

    assert main(["engines", "prune", "--stale", "--engine-cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "removed 3 entries" in out and "stale: built with torch 2.0.0" in out
    assert [k for k, p in paths.items() if p.exists()] == ["current", "big"]

    old = time.time() - 10 * 86400
    os.utime(paths["current"], (old, old))
    assert main(["engines", "prune", "--older-than", "7d", "--engine-cache", str(tmp_path)]) == 0
    assert "unused for 10.0d" in capsys.readouterr().out
    assert not paths["current"].exists() and paths["big"].exists()

    # a hit marks an entry used: the least recently used goes first when over --max-size
    cache = EngineCache(tmp_path, CacheStats())
    small = _entry(cache, "domains-v4-32x32", library_versions()).path
    os.utime(paths["big"], (old, old))
    assert _entry(cache, "domains-v4-32x32", library_versions()).hit
    assert time.time() - small.stat().st_mtime < 60
    assert main(["engines", "prune", "--max-size", "100K", "--engine-cache", str(tmp_path)]) == 0
    assert "least recently used" in capsys.readouterr().out
    assert small.exists() and not paths["big"].exists()

    assert main(["engines", "prune", "--engine-cache", str(tmp_path)]) == 2  # no criterion: refused
    assert main(["engines", "prune", "--max-size", "lots", "--engine-cache", str(tmp_path)]) == 2


def test_prune_skips_an_entry_being_built(tmp_path):
    cache = EngineCache(tmp_path, CacheStats())
    entry = _entry(cache, "domains-v4-32x32", {**library_versions(), "torch": "2.0.0"})
    label, _, short = entry.path.name.rpartition("-")
    with cache._locked("onnx", label, short):  # a builder holds the entry's lock
        removed, busy = cache_admin.prune(tmp_path, stale=True)
    assert removed == [] and [b.path for b in busy] == [entry.path] and entry.path.exists()
    removed, busy = cache_admin.prune(tmp_path, stale=True)
    assert len(removed) == 1 and not busy and not entry.path.exists()


def test_hits_misses_and_build_seconds_are_prometheus_metrics(tmp_path):
    from service import metrics
    from tests.service_helpers import metric_value

    def value(name: str) -> float:
        return metric_value(metrics.render()[0].decode(), name, backend="onnx")

    metrics.watch_engine_cache("onnx")
    before = {n: value(n) for n in ("realiz3d_engine_cache_hits_total", "realiz3d_engine_cache_misses_total")}
    builds_before = value("realiz3d_engine_build_seconds_count")
    cache = EngineCache(tmp_path)  # the process-wide STATS the worker watches
    _entry(cache, "domains-v4-32x32", library_versions())
    _entry(cache, "domains-v4-32x32", library_versions())
    _entry(EngineCache(tmp_path), "domains-v4-32x32", library_versions())
    assert value("realiz3d_engine_cache_misses_total") == before["realiz3d_engine_cache_misses_total"] + 1
    assert value("realiz3d_engine_cache_hits_total") == before["realiz3d_engine_cache_hits_total"] + 2
    assert value("realiz3d_engine_build_seconds_count") == builds_before + 1
    assert engine_cache.STATS.snapshot()["onnx"]["builds"] >= 1


def test_sizes_and_durations_parse():
    assert cache_admin.parse_size("20G") == 20 * 1024**3 and cache_admin.parse_size("500MiB") == 500 * 1024**2
    assert cache_admin.parse_size("1024") == 1024
    assert cache_admin.parse_duration("30d") == 30 * 86400 and cache_admin.parse_duration("90m") == 5400
    with pytest.raises(ValueError):
        cache_admin.parse_duration("soon")
