#!/usr/bin/env bash
# What `python -m xdev.bench --reference torch` costs on a GPU machine, and claim 3 there.
#
# 1. (about 60 s) The matmul benchmark, NumPy on the host's cores and CUDA on the GPU (1024^3
#    and 4096^3, and 4096^3 again in TF32 and float16 on the GPU), without and with the torch
#    yardstick: both wall times, the pauses between CPU sides, and NumPy's figures from both
#    runs side by side (torch's CPU threads must not slow NumPy down).
# 2. (about 60 s, while the budget lasts) claim 3 on this GPU: a --quick run of numpy, cuda
#    and OpenCL through NVIDIA's driver (matmul 4096^3 in float32, TF32 and float16; VGG-16 at
#    112x112), whose verdict shows both halves: float32 units against units, and the tensor-core
#    modes beside OpenCL's rows in the same mode or its best, with the reason.
#
#   here:   bash bench/gpu_prepare.sh                        # .whl/ (pyopencl) for step 2
#   there:  bash bench/gpu_reference_torch.sh                # from the repository root
#           GPU_REF_BUDGET_S=70 bash bench/gpu_reference_torch.sh   # step 1 only
#   dry run on any machine: PYTHON=.venv/bin/python bash bench/gpu_reference_torch.sh --dry-run
#           (NumPy only, 256^3, --quick: the same steps in seconds)
#
# Results land in $OUT when set (the device tool), else /tmp/xdev_reference_timing:
# without-0.json, with-0.json, summary.txt, claim3.json, claim3.txt, reference_timing.log.
# Budget: GPU_REF_BUDGET_S (default 150 s) for the whole script.
# Sets -uo pipefail, REPO (cwd: the repository root), DRY and PY; defines step and friends.
. "$(dirname "$0")/gpu_common.sh"
WORK=${GPU_REF_WORK:-/tmp/xdev_reference_timing}
RES=${OUT:-$WORK}
BUDGET=${GPU_REF_BUDGET_S:-150}
START=$(date +%s)
mkdir -p "$RES" "$WORK"
LOG=$RES/reference_timing.log

main() {
  echo "xdev --reference torch timing $( [ $DRY = 1 ] && echo '(dry run)' ) — $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git')), results in $RES"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  local site=$WORK/site
  install_wheels "$site" "pyopencl may be missing: step 2 then runs without OpenCL"
  export PYTHONPATH="$REPO:$site${PYTHONPATH:+:$PYTHONPATH}"  # xdev from the checkout
  export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  local cudnn_dir
  cudnn_dir=$(pip_cudnn_dir)
  [ -n "$cudnn_dir" ] && export LD_LIBRARY_PATH="$cudnn_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  "$PY" -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads(), "cuda", torch.cuda.is_available())' \
    || echo "!!! torch does not import: the 'with torch' run reports it skipped"
  local gpu=1
  if [ $DRY = 1 ] || ! "$PY" -c 'import xdev, sys; sys.exit(0 if xdev.available_backends()["cuda"].available else 1)' 2>/dev/null; then
    [ $DRY = 0 ] && echo "CUDA is not available here: the NumPy-only dry-run workloads instead"
    gpu=0
  fi
  local timing claim3
  if [ $gpu = 1 ]; then
    timing="--ops matmul --backends numpy,cuda --sizes 1024,4096"
    OCL_SEL=opencl; use_nvidia_opencl || true
    claim3="--quick --ops matmul,conv2d --backends numpy,cuda,$OCL_SEL --sizes 4096 --image 112 --reference torch"
  else
    timing="--ops matmul --backends numpy --sizes 256 --quick"
    claim3="--quick --ops matmul,conv2d --backends numpy,opencl --sizes 256 --image 16"
  fi
  # shellcheck disable=SC2086 # word lists on purpose
  step "1. without and with --reference torch" 75 \
    "$PY" bench/reference_timing.py --out "$RES" --timeout 36 -- $timing
  # shellcheck disable=SC2086
  step "2. claim 3 on this GPU (both halves)" 65 \
    sh -c "\"$PY\" -m xdev.bench $claim3 --json \"$RES/claim3.json\" >\"$RES/claim3.txt\" 2>&1; rc=\$?; tail -n 40 \"$RES/claim3.txt\"; exit \$rc"
  echo
  echo "=== summary (after $(elapsed) s) ==="
  cat "$RES/summary.txt" 2>/dev/null || echo "step 1 left no summary"
  sed -n "/The lecture's claims, measured here/,/claim 4/p" "$RES/claim3.txt" 2>/dev/null | grep -v "^  claim 4" \
    || echo "step 2 left no verdicts"
}

main 2>&1 | tee "$LOG"
