"""`realiz3d bench`: the backend table's report format and the optional targets' clean skips."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

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


def test_each_bench_target_refuses_the_options_it_does_not_use(capsys):
    """One option table, each target's parser derived from it: an option meant for another target is an
    argparse error (exit 2) naming it, never silently ignored."""
    import pytest

    from service.commands.runtime import BENCH_OPTIONS, BENCH_TARGETS

    for argv, flag in (
        (["bench", "cache", "--resume"], "--resume"),
        (["bench", "geometry", "--section", "shipped"], "--section"),
        (["bench", "throughput", "--max-minutes", "3"], "--max-minutes"),
    ):
        with pytest.raises(SystemExit) as refused:
            main(argv)
        err = capsys.readouterr().err
        assert refused.value.code == 2 and flag in err, argv
        # the refusal is the target's own, with its usage: the user sees which options it does take
        assert f"realiz3d bench {argv[1]}: error: unrecognized arguments: {flag}" in err, err
        assert f"usage: realiz3d bench {argv[1]} [-h]" in err, err
    with pytest.raises(SystemExit):  # each target takes only its own sections
        main(["bench", "coverage", "--section", "sd"])
    assert "invalid choice: 'sd'" in capsys.readouterr().err
    assert all(set(o.targets) <= set(BENCH_TARGETS) for o in BENCH_OPTIONS)
    # within unet, the SD-only options are refused for the default shape before anything runs
    assert main(["bench", "unet", "--resume", "--max-minutes", "5"]) == 2
    err = capsys.readouterr().err
    assert "--resume, --max-minutes: only with --shape sd" in err


def test_bench_defaults_are_per_target():
    from service.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["bench", "gateway"]).concurrency == 50
    assert parser.parse_args(["bench", "eta"]).concurrency == 8
    assert parser.parse_args(["bench", "eta"]).name == "eta"
    assert parser.parse_args(["bench", "unet"]).name == "backends"
    assert parser.parse_args(["bench", "eta"]).busy_cores == 0
    assert parser.parse_args(["bench", "eta", "--busy-cores", "1"]).busy_cores == 1


def test_busy_cores_load_the_machine_while_the_block_runs_and_leave_nothing_behind(capsys):
    import pytest

    from engines.bench.background_load import busy_cores
    from service.cli import build_parser

    with busy_cores(0) as none:
        assert none == []
    with busy_cores(1) as procs:
        pid = procs[0].pid
        time.sleep(1.0)
        ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        on_cpu = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, seconds
        assert on_cpu > 0.3 and procs[0].poll() is None  # it spins (a 2-core CI machine still runs it)
    assert procs[0].poll() is not None and not Path(f"/proc/{pid}").exists()  # killed and reaped
    with pytest.raises(RuntimeError), busy_cores(1) as procs:  # the block failing still kills them
        raise RuntimeError("the benchmark failed")
    assert procs[0].poll() is not None
    with pytest.raises(ValueError):
        busy_cores(-1).__enter__()
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["bench", "eta", "--busy-cores", "-1"])
    assert refused.value.code == 2 and "--busy-cores: -1 must be 0 or more" in capsys.readouterr().err


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
    from engines.bench.paired import narrower_than, paired_ratio, ratio_interval

    # A fake clock: the variant takes 1.10x the baseline, plus a drift both sides share. Exact ratios
    # give a zero-width interval at once; noisy ones need more pairs or hit the budget.
    now = [0.0]

    def clock() -> float:
        return now[0]

    def work(seconds):
        def run():
            now[0] += seconds * (1.0 + now[0] * 1e-3)

        return run

    r = paired_ratio(work(1.0), work(1.1), known=narrower_than(0.01), min_pairs=4, clock=clock, warmup=0)
    assert r.converged and r.pairs == 4 and abs(r.ratio - 1.1) < 0.01 and r.low <= r.ratio <= r.high

    import itertools

    jitter = itertools.cycle([0.8, 1.25, 1.0, 1.1, 0.9])
    noisy = paired_ratio(
        work(1.0),
        lambda: now.__setitem__(0, now[0] + next(jitter)),
        known=narrower_than(1e-6),
        max_seconds=60,
        clock=clock,
    )
    assert not noisy.converged and noisy.width > 1e-6 and noisy.pairs > 4

    ratio, low, high = ratio_interval([1.0, 1.02, 0.98, 1.01, 0.99] * 4)
    assert low < ratio < high and high - low < 0.03


def test_paired_ratio_counts_earlier_runs_pairs_with_its_own():
    import itertools

    from engines.bench.paired import narrower_than, paired_ratio

    clock, baseline, variant = fake_clock_steps(1.0, itertools.cycle([0.9, 1.1]))
    # 30 earlier pairs at exactly 1.0 narrow the interval: this run stops after 1 pair (min_pairs is
    # met by the pooled count); without them, 10 pairs alternating 0.9/1.1 stay wider than 0.1.
    pooled = paired_ratio(
        baseline, variant, known=narrower_than(0.1), prior=[1.0] * 30, clock=clock, warmup=0
    )
    assert pooled.converged and pooled.pairs == 31 and pooled.ratios[:30] == (1.0,) * 30
    assert pooled.baseline_ms == 1000.0  # the medians are this run's own
    alone = paired_ratio(baseline, variant, known=narrower_than(0.1), max_seconds=15, clock=clock, warmup=0)
    assert not alone.converged and alone.pairs >= 10


def test_a_long_paired_run_says_where_it_stands_on_its_clock():
    import itertools

    from engines.bench.paired import narrower_than, paired_ratio

    clock, baseline, variant = fake_clock_steps(10.0, itertools.cycle([9.0, 11.0]))
    said: list[str] = []
    r = paired_ratio(
        baseline,
        variant,
        known=narrower_than(1e-9),
        max_seconds=600,
        clock=clock,
        warmup=0,
        progress=said.append,
        progress_every=100,
    )
    # a pair takes 19-21 s of the clock: a line every 5 or 6 pairs from the 10th (min_pairs) on, until
    # the 600 s are spent
    assert not r.converged and 28 <= r.pairs <= 32
    counts = [int(line.split(" pairs")[0]) for line in said]
    assert counts[0] == 10 and len(counts) >= 4
    assert all(b - a in (5, 6) for a, b in itertools.pairwise(counts))
    assert said[0].startswith("10 pairs: 0.9950 [") and "(width " in said[0] and said[0].endswith("of 10 min")


def test_per_run_figures_say_whether_pooled_runs_agree():
    import pytest

    from engines.bench.paired import intervals_overlap, per_run
    from engines.bench.unet import runs_sentence

    noisy = [1.0 + 0.02 * ((i * 7) % 5 - 2) for i in range(20)]  # a spread around 1.0
    shifted = [r * 1.1 for r in noisy]
    same = per_run(noisy + noisy, [20, 20])
    assert same[0] == same[1] and intervals_overlap(same)
    apart = per_run(noisy + shifted, [20, 20])
    assert apart[1][0] == pytest.approx(apart[0][0] * 1.1) and not intervals_overlap(apart)
    with pytest.raises(ValueError, match="do not add up"):
        per_run(noisy, [10, 5])
    runs = [{"pairs": 20, "load_average_1min": 0.5}, {"pairs": 20}]
    assert "NOT overlap" in runs_sentence(runs, noisy + shifted)
    assert "intervals overlap" in runs_sentence(runs, noisy + noisy) and "NOT" not in runs_sentence(
        runs, noisy * 2
    )
    assert runs_sentence(runs[:1], noisy) == ""
    # a resumed run stopped after one pair: listed in the singular, with no interval, and not judged
    stub = runs + [{"pairs": 1}]
    said = runs_sentence(stub, noisy + noisy + shifted[:1])
    assert "; 1 pair reading 1.0560 (under 10: no interval of its own)." in said
    assert (
        "1 pairs" not in said and "intervals overlap" in said and "1 run(s) under 10 pairs left out" in said
    )
    assert "NOT overlap" in runs_sentence(runs + [{"pairs": 1}], noisy + shifted + noisy[:1])
    assert "not judged" in runs_sentence([{"pairs": 20}, {"pairs": 3}], noisy + shifted[:3])


def test_machine_names_the_cpu_model_linux_reports(tmp_path):
    from engines.bench.machine import cpu_model, describe

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
        "\nprocessor\t: 1\ncpu family\t: 99\nmodel\t\t: 9\nmodel name\t: Another\n"
    )
    assert cpu_model(info) == "AMD EPYC, family 26 model 2"  # the first processor's
    info.write_text("processor\t: 0\nmodel name\t: Apple M9\n")
    assert cpu_model(info) == "Apple M9"
    assert cpu_model(tmp_path / "absent") is None
    assert describe({"cpu": "x86_64", "cpu_model": "AMD EPYC, family 26 model 2", "cores": 2}) == (
        "x86_64 (AMD EPYC, family 26 model 2), 2 cores"
    )
    assert describe({"cpu": "x86_64", "cpu_model": None, "cores": 2}) == "x86_64, 2 cores"


def test_bench_unet_sd_resume_pools_runs_and_refuses_a_report_measured_otherwise(tmp_path):
    import pytest

    from engines.bench.unet import run_sd_shifter_cost
    from engines.errors import UserInputError
    from tests.fixtures.models import tiny_model

    built = []

    def build():
        built.append(1)
        return tiny_model(seed=3)

    first = run_sd_shifter_cost(tmp_path, width=1e-9, max_minutes=0.001, build=build)
    assert len(first["runs"]) == 1 and first["pairs"] == first["runs"][0]["pairs"] >= 10
    second = run_sd_shifter_cost(tmp_path, width=1e-9, max_minutes=0.001, build=build, resume=True)
    assert second["pairs"] == first["pairs"] + second["runs"][1]["pairs"] and len(second["runs"]) == 2
    assert second["pair_ratios"][: first["pairs"]] == first["pair_ratios"]
    md = (tmp_path / "unet_sd_cpu.md").read_text()
    assert (
        f"Timed in {second['pairs']} alternating pairs" in md and "from 2 runs pooled with `--resume`" in md
    )
    assert f"{first['pairs']} pairs reading " in md  # each run's own figure and interval

    report = tmp_path / "unet_sd_cpu.json"
    saved = json.loads(report.read_text())
    other_threads = {**saved, "machine": {**saved["machine"], "OMP_NUM_THREADS": "7"}}
    report.write_text(json.dumps(other_threads))
    before = len(built)
    with pytest.raises(UserInputError, match=r"machine\.OMP_NUM_THREADS"):
        run_sd_shifter_cost(tmp_path, max_minutes=0.001, build=build, resume=True)
    assert len(built) == before  # refused before the build
    other_cpu = {**saved, "machine": {**saved["machine"], "cpu_model": "Some CPU, family 1 model 1"}}
    report.write_text(json.dumps(other_cpu))
    with pytest.raises(UserInputError, match="CPU model: Some CPU, family 1 model 1, now "):
        run_sd_shifter_cost(tmp_path, max_minutes=0.001, build=build, resume=True)
    assert len(built) == before
    older = {**saved, "machine": {k: v for k, v in saved["machine"].items() if k != "cpu_model"}}
    report.write_text(json.dumps(older))  # a report from before CPU models were recorded still resumes
    third = run_sd_shifter_cost(tmp_path, width=1e-9, max_minutes=0.001, build=build, resume=True)
    assert len(third["runs"]) == 3 and third["runs"][-1].get("cpu_model") == third["machine"]["cpu_model"]
    report.write_text(json.dumps({**saved, "parameters": 5}))
    with pytest.raises(UserInputError, match="parameters"):
        run_sd_shifter_cost(tmp_path, max_minutes=0.001, build=build, resume=True)
    assert json.loads(report.read_text())["parameters"] == 5  # nothing timed, nothing written


def fake_clock_steps(full: float, shallow):  # noqa: ANN001 - seconds, or an iterator of them
    """A fake clock and a full and a shallow step that advance it (`shallow` may vary per call)."""
    now = [0.0]

    def step(seconds):  # noqa: ANN001
        return lambda: now.__setitem__(0, now[0] + (seconds if isinstance(seconds, float) else next(seconds)))

    return (lambda: now[0]), step(full), step(shallow)


KINDS = {1: "FFFFFF", 2: "FSFSFS", 3: "FSSFSS"}


def test_step_cache_speedups_come_from_the_paired_shallow_over_full_ratio():
    from engines.bench.step_cache import cache_speedup, step_cache_ratio

    assert cache_speedup("FSS", 0.5) == 1.5 and cache_speedup("FFF", 0.3) == 1.0
    clock, full, shallow = fake_clock_steps(1.0, 0.1)
    r, rows = step_cache_ratio(full, shallow, KINDS, 60, clock=clock, warmup=0, min_pairs=4)
    # exact steps: the interval has no width, so the first check after min_pairs stops it
    assert r.converged and r.pairs == 4 and abs(r.ratio - 0.1) < 1e-9
    by_n = {row["cache_interval"]: row for row in rows}
    assert by_n[1]["speedup"] == 1.0 and by_n[1]["denoise_s"] == 6.0
    assert by_n[2]["speedup"] == round(6 / 3.3, 4) and by_n[2]["denoise_s"] == 3.3
    assert by_n[3]["speedup"] == round(6 / 2.4, 4) and by_n[3]["step_kinds"] == "FSSFSS"
    assert all(row["converged"] and row["ci_width_over_speedup"] == 0.0 for row in rows)


def test_step_cache_pairs_stop_on_the_speedups_widths_not_the_ratios():
    import itertools

    from engines.bench.step_cache import INTERVAL_GOAL, step_cache_ratio

    # The shallow step varies by +-5%: the ratio's own interval stays ~2% of it for many pairs, but a
    # speedup only carries the shallow steps' share of it, so the speedups converge first.
    clock, full, shallow = fake_clock_steps(1.0, itertools.cycle([0.095, 0.105, 0.1, 0.102, 0.098]))
    r, rows = step_cache_ratio(full, shallow, KINDS, 3600, clock=clock, warmup=0, min_pairs=4)
    assert r.converged and (r.high - r.low) / r.ratio > INTERVAL_GOAL
    for row in rows:
        low, high = row["speedup_ci95"]
        assert low <= row["speedup"] <= high and row["converged"]
        assert abs(row["ci_width_over_speedup"] - (high - low) / row["speedup"]) < 1e-3

    # much noisier shallow steps: the budget runs out first, and the report says which rows missed the goal
    clock, full, shallow = fake_clock_steps(1.0, itertools.cycle([0.02, 0.3, 0.1, 0.2, 0.05]))
    r, rows = step_cache_ratio(full, shallow, KINDS, 60, clock=clock, warmup=0, min_pairs=4)
    assert not r.converged and r.pairs > 4
    assert [row["converged"] for row in rows] == [True, False, False]  # N=1 is all full steps: exact


def test_bench_cache_section_merges_into_the_report_with_the_max_minutes_budget(
    tmp_path, monkeypatch, capsys
):
    import pytest

    from engines.bench import step_cache
    from engines.bench.step_cache import SECTIONS, Section
    from engines.errors import UserInputError

    asked = []

    def fake_sd(budget):  # noqa: ANN001 - a step_cache.Budget
        asked.append((budget.max_seconds, budget.goal))
        return {
            "model": "fake",
            "unet_batch": 2,
            "method": "Faked.",
            "pairs": 7,
            "converged": True,
            "full_step_ms": 10.0,
            "shallow_step_ms": 1.0,
            "rows": [
                {
                    "cache_interval": 1,
                    "step_kinds": "FF",
                    "denoise_s": 0.02,
                    "speedup": 1.0,
                    "speedup_ci95": [1.0, 1.0],
                    "ci_width_over_speedup": 0.0,
                    "converged": True,
                },
                {
                    "cache_interval": 3,
                    "step_kinds": "FS",
                    "denoise_s": 0.011,
                    "speedup": 1.8,
                    "speedup_ci95": [1.79, 1.81],
                    "ci_width_over_speedup": 0.0111,
                    "converged": False,
                },
            ],
        }

    monkeypatch.setitem(SECTIONS, "sd", Section(fake_sd, SECTIONS["sd"].lines))
    assert main(["bench", "cache", "--section", "sd", "--out", str(tmp_path)]) == 2  # nothing to merge into
    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    committed = json.loads((docs / "step_cache.json").read_text())
    # its sd section as one run on a VM that did not record its CPU model (what the committed one holds varies)
    committed["sd"].pop("earlier_runs", None)
    committed["sd"]["machine"].pop("cpu_model", None)
    (tmp_path / "step_cache.json").write_text(json.dumps(committed))
    assert main(["bench", "cache", "--section", "sd", "--max-minutes", "0.5", "--out", str(tmp_path)]) == 0
    assert asked == [(30.0, 0.01)]  # the goal: 1% of the figure unless --interval-width says otherwise
    merged = json.loads((tmp_path / "step_cache.json").read_text())
    assert {k: v for k, v in merged.items() if k != "sd"} == {k: v for k, v in committed.items() if k != "sd"}
    assert merged["sd"]["pairs"] == 7 and "machine" in merged["sd"]
    md = (tmp_path / "step_cache.md").read_text()
    assert "| 1 | `FF` | 0.02 | 1.0 | 1.0 - 1.0 | 0.00% | 7 | yes |" in md
    assert "## Shipped model on ONNX Runtime" in md and "| torch | all N=1 |" in md
    # the run it replaced is kept, and the report says the two runs' N=3 intervals disagree
    was = {str(r["cache_interval"]): [r["speedup"], *r["speedup_ci95"]] for r in committed["sd"]["rows"]}
    assert merged["sd"]["earlier_runs"] == [
        {
            "measured": f"{committed['sd']['pairs']} pairs",
            "load_average_1min": committed["sd"]["machine"].get("load_average_1min"),
            "speedups": was,
        }
    ]
    assert f"N=3 {was['3'][0]} [{was['3'][1]}, {was['3'][2]}]" in md
    assert "N=3: the runs' intervals do NOT overlap" in md
    assert main(["bench", "cache", "--section", "sd", "--out", str(tmp_path)]) == 0  # a third run: both kept
    for bad in (
        "0",
        "-0.01",
        "1.5",
        "tight",
    ):  # a goal no interval can meet, one every interval meets, no number
        with pytest.raises(SystemExit) as refused:
            main(["bench", "cache", "--section", "sd", "--interval-width", bad, "--out", str(tmp_path)])
        assert refused.value.code == 2
    assert "argument --interval-width: 0 must lie strictly between 0 and 1" in capsys.readouterr().err
    assert (
        main(["bench", "cache", "--section", "sd", "--interval-width", "0.008", "--out", str(tmp_path)]) == 0
    )
    assert asked[-1] == (900.0, 0.008) and len(asked) == 3
    again = json.loads((tmp_path / "step_cache.json").read_text())["sd"]["earlier_runs"]
    assert len(again) == 3 and again[1]["speedups"] == {"1": [1.0, 1.0, 1.0], "3": [1.8, 1.79, 1.81]}
    # the committed run (no CPU model recorded) disagrees; the three runs made here, on one CPU model, agree
    here = json.loads((tmp_path / "step_cache.json").read_text())["sd"]["machine"]["cpu_model"]
    assert again[1]["cpu_model"] == here and "cpu_model" not in again[0]
    md = (tmp_path / "step_cache.md").read_text()
    assert "All 4 runs: N=3: the runs' intervals do NOT overlap" in md and "CPU model not recorded" in md
    assert f"The 3 runs on this run's CPU model ({here}): N=3: the runs' intervals overlap." in md
    try:
        step_cache.run_step_cache_bench(tmp_path, section="nope")
    except UserInputError as e:
        assert "shipped, onnx, batched, sd" in str(e)
    else:
        raise AssertionError("an unknown section was accepted")


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
