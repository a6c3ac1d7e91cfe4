"""`realiz3d bench`: the backend table's report format and the optional targets' clean skips."""

from __future__ import annotations

import json

import torch

from engines.bench.backends import Row, markdown, summarize, write_report
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
        "model": "embedded default (realiz3d-default)",
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
    gpu_only = markdown({**result, "model": "seeded SD-1.x-shaped UNet", "cpu": None})
    assert "seeded SD-1.x-shaped UNet, 4 views" in gpu_only and "Not measured (`cpu=False`)" in gpu_only


def test_bench_rejects_an_unknown_backend_with_exit_2(capsys):
    assert main(["bench", "unet", "--backend", "torch,warp9", "--skip-domain-cost"]) == 2
    assert "warp9" in capsys.readouterr().err


def test_batch_scaling_times_each_batch_of_whole_cfg_objects(tiny_model_dir):
    from engines.bench.unet import batch_scaling, unet_inputs
    from engines.models.model_folder import load_model

    x = unet_inputs(load_model(tiny_model_dir), views=2, objects=3)
    assert x.batch == 12 and x.cameras.shape == (12, 16)
    assert torch.equal(x.cameras[:2], x.cameras[2:4])  # every half of every object: the same 2 cameras
    per_image = batch_scaling(views=2, objects=[1, 3], repeats=1, model_dir=tiny_model_dir)
    assert set(per_image) == {1, 3} and all(ms > 0 for ms in per_image.values())


def test_measure_times_eager_steps_of_the_default_model_on_cpu():
    from engines.bench.backends import count_flops, measure

    rows, inputs, eager = measure([("torch", "fp32")], "cpu", repeats=2, cache_dir=None)
    assert rows[0].skipped is None and len(rows[0].ms) == 2 and all(ms > 0 for ms in rows[0].ms)
    assert inputs.batch == 8 and eager is rows[0].runner.model  # 4 views x CFG
    assert count_flops(eager, inputs) > 1e8  # the shipped block-shift model counted with its domain ids


def test_backend_bench_runs_whole_and_writes_its_report(tmp_path):
    """`run_backend_bench` end to end with the eager backend only (the report, not just its parts)."""
    from engines.bench.backends import run_backend_bench

    result = run_backend_bench(["torch"], ["fp32"], repeats=2, out_dir=tmp_path, gpu=False)
    assert [r["backend"] for r in result["cpu"]] == ["torch"] and result["cpu"][0]["ms_per_step"] > 0
    assert "load average before the run" in result["machine"]["note"]
    assert (tmp_path / "backends.md").is_file() and json.loads((tmp_path / "backends.json").read_text())
    # GPU table only, on a machine without one: nothing measured, so no report replaces the last one
    if not torch.cuda.is_available():
        nothing = tmp_path / "none"
        run_backend_bench(["torch"], ["fp32"], repeats=1, out_dir=nothing, gpu=False, cpu=False)
        assert not nothing.exists()


def test_resolution_bench_measures_each_resolution(tmp_path):
    """`realiz3d bench resolution` on tiny sizes: a row per resolution, ratios against the first."""
    from engines.bench.resolution import run_resolution_bench

    result = run_resolution_bench(
        tmp_path, resolutions=(16, 32), train_rounds=1, steps_per_round=1, gen_repeats=1, gen_steps=2
    )
    rows = {r["resolution"]: r for r in result["rows"]}
    assert set(rows) == {16, 32} and rows[16]["train_step_ratio"] == 1.0 == rows[16]["generate_ratio"]
    assert all(r["train_step_s"] > 0 and r["generate_4x30_s"] > 0 for r in rows.values())
    assert rows[32]["parameters"] == rows[16]["parameters"]  # same architecture, another image size
    md = (tmp_path / "resolution.md").read_text()
    assert "| 32 px |" in md and json.loads((tmp_path / "resolution.json").read_text())["rows"]


def test_shifter_cost_compares_fused_with_a_bare_copy_of_the_same_weights():
    from engines.bench.unet import shifter_cost
    from tests.fixtures.models import tiny_model

    r = shifter_cost(lambda: tiny_model(seed=3), views=1, width=0.5, max_minutes=0.5, min_pairs=2)
    assert r["unet_batch"] == 2 and r["block_sites"] > 0 and r["fused_over_bare"] > 0
    low, high = r["fused_over_bare_interval"]
    assert low <= r["fused_over_bare"] <= high and r["pairs"] >= 2
    assert r["extra_bytes_all_domains"] > 0 and r["bare_step_ms"] > 0


def test_paired_ratio_pairs_until_the_interval_is_narrow_or_the_budget_is_spent():
    from engines.bench.paired import paired_ratio, ratio_interval

    # A fake clock: the variant takes 1.10x the baseline, plus a drift both sides share. Exact ratios
    # give a zero-width interval at once; noisy ones need more pairs or hit the budget.
    now = [0.0]

    def clock() -> float:
        return now[0]

    def work(seconds):
        def run():
            now[0] += seconds * (1.0 + now[0] * 1e-3)

        return run

    r = paired_ratio(work(1.0), work(1.1), width=0.01, min_pairs=4, clock=clock, warmup=0)
    assert r.converged and r.pairs == 4 and abs(r.ratio - 1.1) < 0.01 and r.low <= r.ratio <= r.high

    import itertools

    jitter = itertools.cycle([0.8, 1.25, 1.0, 1.1, 0.9])
    noisy = paired_ratio(
        work(1.0), lambda: now.__setitem__(0, now[0] + next(jitter)), width=1e-6, max_seconds=60, clock=clock
    )
    assert not noisy.converged and noisy.width > 1e-6 and noisy.pairs > 4

    ratio, low, high = ratio_interval([1.0, 1.02, 0.98, 1.01, 0.99] * 4)
    assert low < ratio < high and high - low < 0.03


def test_flops_are_counted_on_a_half_precision_eager_model_as_on_fp32():
    """A GPU run's eager model is fp16 or bf16 while the benchmark's inputs are fp32 (the runners cast
    them): counting its FLOPs must cast too, or the report is lost after every row was measured."""
    from engines.bench.backends import bench_inputs, count_flops
    from engines.pipelines import Realiz3DPipeline

    model = Realiz3DPipeline.load(None).model.eval()
    inputs = bench_inputs(model, "cpu")
    fp32 = count_flops(model, inputs)
    model.to(torch.device("cpu"), torch.bfloat16)
    assert count_flops(model, inputs) == fp32 > 0
