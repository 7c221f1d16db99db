#!/usr/bin/env bash
# The one prepared check for the day a GPU (or TPU VM) is at hand: unattended, under 8 minutes
# on one GPU, one table at the end (also written to $OUT/accelerator_check.txt).
#
#   bash bench/accelerator_check.sh            # OUT=runs/accelerator_check by default
#
# Runs, each under its own time limit and logged to $OUT/<step>.log:
#   devices    nvidia-smi facts (name, memory, driver) and JAX's devices
#   profile    main.py --mode=profile at the paper's batch (64), float32 and bfloat16
#   train_step bench/train_step.py at the paper's setting (8 videos x 8 frames per device,
#              R50@112 student, R152@224 teacher), float32 then bfloat16
#   inference  bench/inference.py (batch 64, 112 and 224) against PyTorch on the same GPU
#              where torch sees CUDA (else JAX alone)
#   input      bench/input_pipeline.py with all host cores
# Stops at once, with one line and exit status 2, when JAX sees no accelerator.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-runs/accelerator_check}

platform=$("$PY" -c 'import jax; print(jax.devices()[0].platform)' 2>/dev/null | tail -n 1)
if [ "$platform" != "gpu" ] && [ "$platform" != "tpu" ]; then
  echo "error: no accelerator visible to JAX (its first device is '${platform:-none}'): install the cuda12 extra (README, 'On a GPU machine'), check nvidia-smi and that JAX_PLATFORMS does not exclude the GPU" >&2
  exit 2
fi

mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
rows=()

run() {  # run NAME SECONDS CMD...: one table row (status, seconds, last output line)
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS status
  timeout --signal=TERM "$limit" "$@" >"$OUT/$name.log" 2>&1
  status=$?
  local last
  last=$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-100)
  [ $status -eq 124 ] && last="stopped after ${limit}s (time limit)"
  rows+=("$(printf '%-11s %-6s %5ss  %s' "$name" "$([ $status -eq 0 ] && echo ok || echo "rc=$status")" "$((SECONDS - t0))" "$last")")
}

run devices 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>/dev/null || true; \"$PY\" -c 'import jax; print(jax.__version__, jax.devices(), jax.devices()[0].device_kind)'"
run profile 150 "$PY" main.py --config=configs/activitynet_r50_112.py --workdir="$OUT/profile" \
  --mode=profile --resolutions=224,112
run train_step_f32 90 "$PY" bench/train_step.py --videos=8 --frames=8 --runs=5 --input-steps=5 --dtype=float32
run train_step_bf16 90 "$PY" bench/train_step.py --videos=8 --frames=8 --runs=5 --input-steps=5 --dtype=bfloat16
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  run inference 60 "$PY" bench/inference.py --batch-size=64 --frames=8 --resolutions=112,224 --iters=5 \
    --torch-device=cuda
else
  run inference 60 "$PY" bench/inference.py --batch-size=64 --frames=8 --resolutions=112,224 --iters=5 --skip-torch
fi
run input 60 "$PY" bench/input_pipeline.py --threads=all --videos=24

{
  echo "accelerator check, $(date -u +%Y-%m-%dT%H:%M:%SZ), platform $platform (logs in $OUT/)"
  printf '%-11s %-6s %6s  %s\n' step status time "last line of its log"
  printf '%s\n' "${rows[@]}"
} | tee "$OUT/accelerator_check.txt"
