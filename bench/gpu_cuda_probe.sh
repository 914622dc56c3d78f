#!/usr/bin/env bash
# A short look at the CUDA defaults on one NVIDIA GPU (about 3 minutes): where the host
# microseconds of a small call go (bench/cuda_host_cost.py, beside torch and cupy.matmul), the
# numeric modes' errors and speed with no flags (bench/cuda_targets.py --only tf32,fp16 with
# the test suite's error logs), and forward + backward per part on the layers that matter for item 3b
# (bench/gpu_backward.py --parts). The full check is bench/gpu_check.sh.
#
#   there:  bash bench/gpu_cuda_probe.sh            # from the repository root, .whl/ beside it
#   dry run on any machine: PYTHON=.venv/bin/python bash bench/gpu_cuda_probe.sh --dry-run
#
# Results in $OUT when set (the device tool), else bench/results/: gpu_cuda_probe.log,
# host_cost.json, cuda_targets.json, errors_*.jsonl, backward_parts.json.
# Sets -uo pipefail, REPO (cwd: the repository root), DRY and PY; defines the helpers below.
. "$(dirname "$0")/gpu_common.sh"
RES=${OUT:-$REPO/bench/results}
WORK=${GPU_PROBE_WORK:-/tmp/xdev_gpu_probe}
BUDGET=${GPU_PROBE_BUDGET_S:-220}
START=$(date +%s)
mkdir -p "$RES" "$WORK"
LOG=$RES/gpu_cuda_probe.log

main() {
  echo "xdev CUDA probe $( [ $DRY = 1 ] && echo '(dry run)' ) — $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git')), results in $RES"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
  python_env "$WORK/site" "cuDNN's frontend may be missing"
  unset XDEV_CUDA_TF32 XDEV_CUDNN_FAST XDEV_CUDNN_AUTOTUNE XDEV_CUDNN_AUTOTUNE_LIMIT
  local fake=() cache=$WORK/cache calls=(--calls 1000 --rounds 5) sections=tf32,fp16
  rm -rf "$cache" "$RES"/errors_*.jsonl
  if [ $DRY = 1 ]; then
    fake=(--fake) calls=(--calls 100 --rounds 2) sections=tf32  # NumPy-backed fakes: one mode is enough
    echo "dry run: CuPy, cuBLAS and cuDNN replaced by bench/cuda_host_cost.py's do-nothing fakes (figures meaningless)"
  fi

  step "host cost per call, layer by layer" 25 "$PY" bench/cuda_host_cost.py "${fake[@]}" "${calls[@]}" \
    --profile --json "$RES/host_cost.json"

  # The shared numeric tests on CUDA in its default modes (strict float32, float16 with
  # Winograd/FFT allowed), each check's error / bound logged.
  local xdist=()
  "$PY" -c "import xdist" 2>/dev/null && xdist=(-n 8)
  local tests=(tests/contract/test_conv2d.py tests/contract/test_conv2d_backward.py)
  if [ $DRY = 1 ]; then
    echo "dry run: the GPU run is: XDEV_BACKEND=cuda XDEV_TEST_REQUIRE=cuda XDEV_TEST_ERROR_LOG=$RES/errors_default.jsonl $PY -m pytest -q ${xdist[*]} ${tests[*]}"
  else
    step "conv tests on CUDA, default modes" 60 env XDEV_BACKEND=cuda XDEV_TEST_REQUIRE=cuda XDEV_HYPOTHESIS_PROFILE=ci \
      XDEV_CUDNN_AUTOTUNE_LIMIT=2 XDEV_CACHE_DIR="$cache-tests" XDEV_TEST_ERROR_LOG="$RES/errors_default.jsonl" \
      "$PY" -m pytest -q -ra -p no:cacheprovider "${xdist[@]}" "${tests[@]}"
  fi

  local logs=()
  [ -e "$RES/errors_default.jsonl" ] && logs=(--error-log "$RES/errors_default.jsonl")
  step "targets: TF32 and float16 VGG-16 with no flags" 90 env XDEV_CACHE_DIR="$cache" \
    "$PY" bench/cuda_targets.py "${fake[@]}" --only $sections --budget-s 85 --out "$RES" "${logs[@]}"

  if [ $DRY = 1 ]; then
    echo "dry run: the GPU run is: $PY bench/gpu_backward.py --layers conv1_1,conv1_2,conv2_1,conv4_2 --parts --repeat 5"
  else
    step "forward + backward by part" 45 env XDEV_CACHE_DIR="$cache" "$PY" bench/gpu_backward.py \
      --layers conv1_1,conv1_2,conv2_1,conv4_2 --parts --repeat 5 --json "$RES/backward_parts.json"
  fi
  echo
  echo "=== probe done after $(elapsed)s (budget ${BUDGET}s); files in $RES:"
  ls -l "$RES"
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
