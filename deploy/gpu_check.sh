#!/usr/bin/env bash
# `make gpu-check`: the first run on a CUDA machine, in one command (issue 14 item 7).
#
# Assumes Python 3.12 with a CUDA build of PyTorch already installed (the GPU machine has no network):
# everything else comes from wheels in $WHEELS (default ./wheels, filled by `make gpu-wheels` on a machine
# with the package index). Steps, each logged under $OUT (default docs/benchmarks):
#   1. a venv over the system site-packages (keeps the machine's torch), our deps from the wheel folder;
#   2. the `gpu` and `tensorrt` tests (TensorRT ones skip where its libraries are absent);
#   3. `realiz3d bench unet` on a seeded SD-1.x-shaped UNet (64x64 latents): eager vs compile (+TensorRT
#      where installed) in fp16 and bf16 -> $OUT/gpu_unet.{md,json};
#   4. the throughput benchmark with a GPU worker (needs a redis-server binary) -> $OUT/gpu_throughput*.
# A failing step is recorded and the next one still runs; the exit status is the number that failed.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
OUT=${OUT:-docs/benchmarks}
VENV=${GPU_VENV:-.venv-gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
failed=0

step() {  # step NAME CMD...: run, tee into the log, count failures
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  return 0
}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu-check: no CUDA GPU visible to $PY's torch; nothing to check here" | tee -a "$LOG"
  exit 2
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "on", torch.cuda.get_device_name())' | tee -a "$LOG"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv --system-site-packages "$VENV"
fi
# Our dependencies except the ones the GPU machine brings (torch, onnx, onnxruntime, accelerate,
# transformers): pip would otherwise try to replace its CUDA torch with our CPU pin.
deps=$("$VENV/bin/python" deploy/gpu_requirements.py)
if [ -d "$WHEELS" ]; then
  # shellcheck disable=SC2086 # one requirement per word
  step install "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" $deps
else
  echo "gpu-check: no wheel folder $WHEELS; using what is installed" | tee -a "$LOG"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
R3D=("$VENV/bin/python" -m service.cli)

# Only the files that hold such tests: collecting the rest would import test-only packages
# (playwright, moto, scikit-image) the GPU machine lacks.
mapfile -t gpu_tests < <(grep -l "mark\.gpu\|mark\.tensorrt" tests/test_*.py)
step tests "$VENV/bin/python" -m pytest -q -ra -m "gpu or tensorrt" -p no:cacheprovider "${gpu_tests[@]}"
step bench-unet "${R3D[@]}" bench unet --shape sd --gpu-only --skip-domain-cost --steps 4 \
  --name gpu_unet --out "$OUT"
if command -v redis-server >/dev/null 2>&1; then
  step bench-throughput env REALIZ3D_DEVICE=cuda "${R3D[@]}" bench throughput --concurrency 8 --jobs 24 \
    --rounds 2 --name gpu_throughput --out "$OUT"
else
  echo "gpu-check: no redis-server binary: throughput benchmark not run" | tee -a "$LOG"
  failed=$((failed + 1))
fi
echo "gpu-check: $failed step(s) failed; log in $LOG" | tee -a "$LOG"
exit "$failed"
