"""`realiz3d bench gateway`: the load benchmark runs end to end on a tiny load (no timing assertions)."""

from __future__ import annotations

import json
import shutil

import pytest

from engines.bench.gateway import markdown, run


@pytest.mark.skipif(
    shutil.which("wrk") is None or shutil.which("redis-server") is None,
    reason="needs wrk and redis-server (apt-get install wrk redis-server)",
)
def test_the_gateway_benchmark_measures_both_apps_and_writes_its_report(tmp_path):
    report = run(concurrency=2, seconds=1, rounds=1, workers=1, out_dir=tmp_path, warmup_seconds=0)
    for route in ("get", "post"):
        for app in ("bare", "gateway"):
            figures = report["summary"][route][app]
            assert figures["requests"] > 0 and figures["errors"] == 0, (route, app, figures)
        assert report["summary"][route]["ratio"] > 0 and len(report["summary"][route]["ratios"]) == 1
    saved = json.loads((tmp_path / "gateway.json").read_text())
    assert saved["summary"] == report["summary"] and set(saved["met"]) >= {"get_ratio", "post_p99_ms"}
    md = (tmp_path / "gateway.md").read_text()
    assert md == markdown(report) and "`POST /v1/multiview` | gateway" in md and "wrk" in md
