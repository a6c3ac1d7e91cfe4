"""`make gpu-check` and `make gpu-train` on a machine without a GPU, and the wheel list they install from.

The scripts run end to end here with their GPU measurements skipped, and write a few files into one output
folder (what the device tool brings back): a log, a summary and a tarball."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
from gpu_requirements import prune, requirements  # noqa: E402

NO_GPU = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="a CUDA GPU is here: the scripts would run for real"
)


def names(reqs: list[str]) -> set[str]:
    return {r.split("[")[0].split(">")[0].split("=")[0].lower() for r in reqs}


def summary(out: Path, run: str) -> dict[str, dict[str, str]]:
    with (out / f"{run}_summary.tsv").open() as f:
        return {row["step"]: row for row in csv.DictReader(f, delimiter="\t")}


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "WHEELS": str(tmp_path / "no-wheels"),
        "TMPDIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def test_the_wheel_lists_never_ask_for_the_machines_torch_and_lean_drops_texturing():
    pyproject = ROOT / "pyproject.toml"
    full, lean = names(requirements(pyproject)), names(requirements(pyproject, True))
    train = names(requirements(pyproject, True, run="train"))
    machines = {"torch", "onnxruntime", "transformers", "accelerate"}
    assert not machines & (full | train)  # pip would replace the CUDA torch
    assert {"diffusers", "celery", "fastapi", "pytest"} <= lean
    assert {"scipy", "opencv-python-headless", "boto3", "trimesh", "embreex"} <= full - lean
    assert "uvicorn" in lean and not any("[standard]" in r for r in requirements(pyproject, True))
    assert {"diffusers", "trimesh", "embreex", "pillow"} <= train  # the toy data is rendered there
    assert not {"scipy", "celery", "fastapi", "pytest"} & train


def test_lean_prunes_only_what_the_machines_packages_require(tmp_path: Path):
    kept = ["diffusers-0.42.1-py3-none-any.whl", "huggingface_hub-2.4.0-py3-none-any.whl"]
    gone = [
        "numpy-2.5.5-cp312-cp312-manylinux_2_28_x86_64.whl",
        "PyYAML-6.0.3-cp312-cp312-manylinux_2_28_x86_64.whl",
    ]
    for name in kept + gone:
        (tmp_path / name).write_bytes(b"")
    assert sorted(prune(tmp_path)) == sorted(gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_failed_or_timed_out_step_is_recorded_and_the_next_still_runs(tmp_path: Path):
    script = (
        "RUN=demo; source deploy/gpu_steps.sh; step fails 20 false; step hangs 1 sleep 60; "
        "skip absent 'not here'; NOTE='with a note' step works 20 echo hello; finish"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=script_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr  # two steps failed
    out = tmp_path / "out"
    rows = summary(out, "demo")
    assert [(s, r["status"]) for s, r in rows.items()] == [
        ("fails", "failed"),
        ("hangs", "timeout"),
        ("absent", "skipped"),
        ("works", "ok"),
    ]
    assert rows["works"]["note"] == "with a note" and rows["absent"]["note"] == "not here"
    with tarfile.open(out / "demo.tar.gz") as tar:
        assert tar.extractfile("demo/logs/works.log").read() == b"hello\n"
        assert b"hangs\ttimeout" in tar.extractfile("demo/summary.tsv").read()
    assert sorted(p.name for p in out.iterdir()) == ["demo.log", "demo.tar.gz", "demo_summary.tsv"]
    assert not list(tmp_path.glob("demo.*"))  # the staging folder is gone


@NO_GPU
def test_gpu_check_runs_end_to_end_on_the_cpu_with_its_gpu_steps_skipped(tmp_path: Path):
    done = subprocess.run(
        ["bash", "deploy/gpu_check.sh"],
        cwd=ROOT,
        env=script_env(tmp_path, GPU_CHECK_FAST="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no CUDA GPU visible" in done.stdout
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.log",
        "gpu_check.tar.gz",
        "gpu_check_summary.tsv",
    ]
    rows = summary(out, "gpu_check")
    assert list(rows) == [
        "environment",
        "install",
        "tests",
        "bench-unet-fp16",
        "bench-throughput",
        "bench-unet-bf16",
    ]
    assert rows["environment"]["status"] == "ok"
    assert rows["install"]["status"] == "skipped" and "no wheel folder" in rows["install"]["note"]
    # the GPU benchmark's command ran, and said it had nothing to measure here
    assert rows["bench-unet-fp16"]["status"] == "ok" and "no CUDA GPU" in rows["bench-unet-fp16"]["note"]
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        members = set(tar.getnames())
        assert {"gpu_check/summary.tsv", "gpu_check/logs/environment.log"} <= members
        log = tar.extractfile("gpu_check/logs/bench-unet-fp16.log").read().decode()
    assert "no CUDA GPU here: no backend report written" in log
    assert not (ROOT / "docs" / "benchmarks" / "gpu_unet_fp16.md").exists()  # never a CPU figure as a GPU one


@NO_GPU
def test_gpu_train_says_there_is_no_gpu_and_trains_nothing(tmp_path: Path):
    done = subprocess.run(
        ["bash", "deploy/gpu_train.sh"], cwd=ROOT, env=script_env(tmp_path), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = summary(tmp_path / "out", "gpu_train")
    assert rows["train"]["status"] == "skipped" and "no CUDA GPU" in rows["train"]["note"]
    assert "pack-models" not in rows


@NO_GPU
def test_gpu_train_on_the_cpu_at_a_tiny_size_brings_back_both_model_folders(tmp_path: Path):
    pytest.importorskip("skimage", reason="the real-domain photographs come from scikit-image's sample data")
    from engines.models.model_folder import load_model

    tiny = (
        "--resolution 16 --channels 16,32,32 --synthetic-objects 6 --photos 12 --batch 1 --batch-real 4 "
        "--precision bf16 --log-every 1000"
    )
    env = script_env(
        tmp_path, ALLOW_CPU="1", TRAIN_MINUTES="0.25", CHECKPOINT_MINUTES="0.02", TRAIN_ARGS=tiny
    )
    done = subprocess.run(
        ["bash", "deploy/gpu_train.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    rows = summary(out, "gpu_train")
    assert rows["train"]["status"] == "ok" and rows["pack-models"]["status"] == "ok"
    for stage in ("stage2", "naive"):
        with tarfile.open(out / f"gpu_train_{stage}.tar.gz") as tar:
            tar.extractall(tmp_path / stage, filter="data")
        model = load_model(tmp_path / stage / "final")
        assert model.config.resolution == 16
    with tarfile.open(out / "gpu_train.tar.gz") as tar:
        assert "gpu_train/runs/stage2/log.jsonl" in tar.getnames()
        train_log = tar.extractfile("gpu_train/logs/train.log").read().decode()
    assert "mixed precision bf16" in train_log and "naive: " in train_log
