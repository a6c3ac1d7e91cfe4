#!/usr/bin/env bash
# `make gpu-train`: the shipped training recipe (base, stage 1, stage 2, naive baseline; docs/training.md) on a
# CUDA GPU at 64 px, with bf16 autocast and a larger batch, within TRAIN_MINUTES (default 5) of wall time,
# in one command (issue 26, item 3b). Like deploy/gpu_check.sh it installs our dependencies from $WHEELS
# (default wheels/train, `make gpu-wheels LEAN=1`: with the toy data's sample photographs in
# wheels/train/photos), needs no network, and writes a few files into $OUT (default ./gpu-check-out):
#   gpu_train.log, gpu_train_summary.tsv, gpu_train.tar.gz (logs, each stage's log.jsonl / latest.json);
#   gpu_train_stage2.tar.gz, gpu_train_naive.tar.gz: the Realiz3D model and the naive baseline, each a model
#     folder (`final`, or `latest` where the run was cut off: the EMA weights of the last periodic checkpoint).
# The toy data is generated on the machine first (in the budget). `realiz3d train --max-minutes` shares the
# budget among the stages and writes OUT/latest every CHECKPOINT_MINUTES (default 1); the step's own time
# limit is the budget plus 2 minutes, and the model folders are packed whatever happened to it.
# TRAIN_ARGS is appended to the train command (later flags win): e.g. "--channels 48,96,96" or smaller data.
# Without a CUDA GPU it stops after the install (nothing to train) unless ALLOW_CPU=1 (the script's test
# trains a tiny model that way).
RUN=gpu_train WHEEL_RUN=train
# shellcheck source=deploy/gpu_steps.sh
source "$(dirname "$0")/gpu_steps.sh"
MINUTES=${TRAIN_MINUTES:-5}
RUNS=$STAGE_ROOT/runs
export RUNS RUN
export REALIZ3D_HOME=$STAGE_ROOT/home # the toy data is made here, fresh
if [ -d "$WHEELS/photos" ]; then
  REALIZ3D_PHOTO_DIR=$(cd "$WHEELS/photos" && pwd)
  export REALIZ3D_PHOTO_DIR
fi

step environment "${LIMIT_ENVIRONMENT:-30}" environment
install_wheels
if cuda_visible; then
  say "a CUDA GPU is visible: training with bf16 autocast for $MINUTES min"
elif [ "${ALLOW_CPU:-0}" = 1 ]; then
  say "no CUDA GPU visible: ALLOW_CPU=1, training on the CPU for $MINUTES min"
else
  skip train "no CUDA GPU visible to $PY's torch (ALLOW_CPU=1 trains on the CPU)"
  finish
fi

# The recipe's step ratios (base 1500 : stage 1 1200 : stage 2 4800 : naive 6000) scaled up as caps; the
# budget decides how many run. The shipped widths at 64 px: 4 views x 30 steps in 3.5 s on 2 CPU cores
# (docs/benchmarks/resolution.md), inside the 10 s bar a new default must meet.
ARGS=(
  --stage all --out "$RUNS" --resolution 64 --channels 32,64,64 --batch 16 --batch-real 64
  --base-steps 15000 --steps 60000 --stage1-steps 12000 --synthetic-objects 800 --photos 3200
  --precision auto --log-every 100 --max-minutes "$MINUTES" --checkpoint-minutes "${CHECKPOINT_MINUTES:-1}"
)
read -ra EXTRA <<<"${TRAIN_ARGS:-}"
step train "$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 + 120 }')" \
  "$PY" -m service.cli train "${ARGS[@]}" "${EXTRA[@]}"

# pack_models: every stage's logs into the tarball; stage 2 and naive as model folders of their own.
pack_models() {
  local s d src
  for s in base stage1 stage2 naive; do
    d=$RUNS/$s
    [ -d "$d" ] || continue
    mkdir -p "$STAGE/runs/$s"
    cp "$d"/*.json* "$STAGE/runs/$s/" 2>/dev/null
    if [ -f "$d/final/realiz3d.json" ]; then
      src=final
    elif [ -f "$d/latest/realiz3d.json" ]; then
      src=latest
    else
      echo "$s: no model folder"
      continue
    fi
    echo "$s: $src, step $(tail -1 "$d/log.jsonl" 2>/dev/null)"
    if [ "$s" = stage2 ] || [ "$s" = naive ]; then
      tar -czf "$OUT/${RUN}_$s.tar.gz" -C "$d" "$src" || return 1
      echo "$s: $src -> $OUT/${RUN}_$s.tar.gz ($(du -h "$OUT/${RUN}_$s.tar.gz" | cut -f1))"
    fi
  done
  [ -f "$OUT/${RUN}_stage2.tar.gz" ] && [ -f "$OUT/${RUN}_naive.tar.gz" ]
}
step pack-models "${LIMIT_PACK:-60}" pack_models
finish
