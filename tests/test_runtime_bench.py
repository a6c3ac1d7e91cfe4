"""`realiz3d bench`: the backend table's report format and the optional targets' clean skips."""

from __future__ import annotations

import json

from engines.runtime.bench_backends import Row, markdown, summarize, write_report
from service.cli import main


def test_summary_gives_ratios_to_eager_of_the_same_precision_and_keeps_skip_reasons(tmp_path):
    rows = [
        Row("torch", "fp32", "cpu", ms=[100.0, 110.0, 90.0]),
        Row("onnx", "fp32", "cpu", ms=[50.0, 50.0, 50.0]),
        Row("tensorrt", "fp16", "cpu", skipped="TensorRT not installed or no CUDA GPU here: not run"),
    ]
    summary = summarize(rows, flops=2e9, peak_gflops=100.0)
    assert summary[1]["speedup_vs_eager"] == 2.0 and summary[1]["flops_over_peak"] == 0.4
    assert "ms_per_step" not in summary[2] and "not run" in summary[2]["skipped"]
    result = {
        "machine": {
            "cpu": "x",
            "cores": 2,
            "torch_threads": 1,
            "OMP_NUM_THREADS": "1",
            "torch": "t",
            "note": "n",
        },
        "views": 4,
        "unet_batch": 8,
        "unet_gflop_per_step": 2.0,
        "cpu_matmul_peak_gflops_fp32": 100.0,
        "cpu": summary,
        "gpu": {"skipped": "no CUDA GPU on this machine"},
    }
    write_report(result, tmp_path)
    md = (tmp_path / "backends.md").read_text()
    assert "| onnx | fp32 | 50.0 | 2.0x |" in md and "skipped: TensorRT not installed" in md
    assert json.loads((tmp_path / "backends.json").read_text())["gpu"]["skipped"]
    assert markdown(result) == md


def test_bench_rejects_an_unknown_backend_with_exit_2(capsys):
    assert main(["bench", "unet", "--backend", "torch,warp9", "--skip-domain-cost"]) == 2
    assert "warp9" in capsys.readouterr().err
