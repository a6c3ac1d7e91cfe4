"""Training on a lent GPU for minutes (issue 26, item 3a), checked on the CPU at a tiny size: a time budget
that ends every stage with its weights, periodic checkpoints that a killed run leaves behind as a model
folder, bf16 autocast, and a 64 px checkpoint that fits the device tool's transfer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("skimage", reason="the real-domain photographs come from scikit-image's sample data")

from engines.models.model_folder import load_model  # noqa: E402
from engines.training.data import DataSpec  # noqa: E402
from engines.training.train import Trainer, train_all  # noqa: E402
from tests.test_training_train import LOG, tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_CLI = [
    *("--resolution", "16", "--channels", "16,32,32", "--synthetic-objects", "6", "--photos", "12"),
    *("--batch", "1", "--batch-real", "4"),
]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_time_budget_ends_the_stage_with_its_weights(tmp_path: Path):
    lines: list[str] = []
    trainer = Trainer(tiny("base", 10**6, max_seconds=2.0, warmup=100), tmp_path / "base", log=lines.append)
    final = trainer.run()
    assert trainer.step < 10**6
    assert any("time budget" in line for line in lines)
    assert load_model(final).config.resolution == 16
    state = json.loads((tmp_path / "base" / "checkpoint" / "state.json").read_text())
    assert state["step"] == trainer.step
    assert not (tmp_path / "base" / "latest").exists()  # superseded by final


def test_steps_are_fitted_to_the_time_left(tmp_path: Path):
    trainer = Trainer(tiny("base", 1000, warmup=100), tmp_path / "base", log=LOG)
    trainer.step = 20
    trainer._fit_steps(steps_per_s=10.0, seconds_left=5.0)
    assert trainer.cfg.steps == 70  # so the learning-rate schedule ends with the time
    assert trainer.cfg.warmup == 7
    trainer._fit_steps(steps_per_s=100.0, seconds_left=60.0)
    assert trainer.cfg.steps == 70  # never lengthened


def test_the_whole_recipe_fits_a_budget(tmp_path: Path):
    cfg = tiny("base", 10**6, max_seconds=4.0)
    paths = train_all(cfg, tmp_path, base_steps=10**6, stage1_steps=3 * 10**5, resume=False, log=LOG)
    assert set(paths) == {"base", "stage1", "stage2", "naive"}
    for stage, folder in paths.items():
        steps = [
            json.loads(line)["step"] for line in (tmp_path / stage / "log.jsonl").read_text().splitlines()
        ]
        assert 0 < steps[-1] < 10**6, stage  # every stage ran, and stopped at its share of the time
        assert load_model(folder).shifter.form == "block-shift"


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change once set (a real run is
    one process, one precision); these tests set two, each on a fresh state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_bf16_autocast_runs_the_unet_in_bf16_on_the_cpu_too(
    tmp_path: Path, precision: str, dtype, fresh_accelerate_state
):
    trainer = Trainer(tiny("base", 2, precision=precision), tmp_path / precision, log=LOG)
    seen: list[torch.dtype] = []
    hook = trainer.model.unet.unet.conv_in.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        losses = trainer.train_step(0)
    finally:
        hook.remove()
    assert seen and set(seen) == {dtype}
    assert torch.isfinite(torch.tensor(losses["loss_real"]))
    assert all(p.dtype == torch.float32 for p in trainer.params)  # autocast, not a cast of the weights


def test_a_64px_checkpoint_fits_the_transfer(tmp_path: Path):
    """The GPU run's architecture (the shipped widths at 64 px): the resumable checkpoint stays under the
    device tool's 64 MiB, the model folder a GPU run brings back under its 16 MiB per file."""
    data = DataSpec(synthetic=2, real=4, seed=3, resolution=64)
    cfg = tiny("base", 1, data=data, resolution=64, channels=(32, 64, 64), checkpoint_seconds=1e-6)
    trainer = Trainer(cfg, tmp_path / "run", log=LOG)
    trainer.run()
    assert folder_bytes(tmp_path / "run" / "checkpoint") < 64 * 2**20
    assert folder_bytes(tmp_path / "run" / "final") < 16 * 2**20
    assert load_model(tmp_path / "run" / "final").config.resolution == 64


def test_a_killed_run_leaves_a_model_folder_and_resumes(tmp_path: Path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "service.cli", "train", "--stage", "base", "--out", str(out), *TINY_CLI]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--steps", "1000000", "--checkpoint-minutes", "0.01", "--precision", "bf16"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "latest.json").is_file():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "no periodic checkpoint within 240 s"
            time.sleep(0.2)
        time.sleep(1.5)  # past another periodic write or two: the kill may land in one
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    latest = json.loads((out / "latest.json").read_text())
    assert latest["stage"] == "base" and latest["step"] >= 1
    model = load_model(out / "latest")  # the EMA weights: a usable model folder
    assert model.config.resolution == 16
    load_model(out / "checkpoint" / "model")
    step = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    done = subprocess.run(
        [*cmd, "--steps", str(step + 2), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming stage base from step {step}" in done.stdout
    assert load_model(out / "final").config.resolution == 16
    assert not (out / "latest").exists()
