#!/usr/bin/env bash
# The OpenCL tensor-core GEMM (gemm_tc.cl) on one NVIDIA GPU, under 2 minutes: the device proof
# (which runs the tc family in both modes), then bench/tc_check.py for float16 and for TF32:
# every tile variant built through NVIDIA's OpenCL and as CUDA (the same kernel text), checked
# against float64 on odd shapes, and GEMM 4096^3 timed interleaved with cuBLAS in the same mode.
# Sibling of gpu_opencl.sh (same machine assumptions: no network, Python 3.12, cupy-cuda13x;
# pyopencl from the .whl/ that bench/gpu_prepare.sh fills).
#
#   there:  bash bench/gpu_tensorcore.sh           # from the repository root, .whl/ beside it
#   dry run on any machine: PYTHON=.venv/bin/python bash bench/gpu_tensorcore.sh --dry-run
#
# Results land in $OUT when set (the device tool), else bench/results/gpu-tensorcore-<date>/
# (a dry run: /tmp/xdev_gpu_tc/results-dry/): gpu_tensorcore.log, tc-f16.json, tc-tf32.json,
# device.json, and gemm_tc-<mode>.ptx (what NVIDIA's OpenCL compiler made of the default tiles).
# GPU_TC_INNER=4 times 4 back-to-back GEMMs per call (host launch costs overlap the GPU's work).
# Budget: GPU_TC_BUDGET_S (default 100 s) for the whole script; each mode builds and checks
# variants in priority order for 70% of its share, then times those that passed.
# Sets -uo pipefail, REPO (cwd: the repository root), DRY and PY; defines the helpers below.
. "$(dirname "$0")/gpu_common.sh"
WORK=${GPU_TC_WORK:-/tmp/xdev_gpu_tc}
if [ $DRY = 1 ]; then RES=${OUT:-$WORK/results-dry}; else RES=${OUT:-$REPO/bench/results/gpu-tensorcore-$(date -u +%Y-%m-%d)}; fi
BUDGET=${GPU_TC_BUDGET_S:-100}
START=$(date +%s)
mkdir -p "$RES" "$WORK"
LOG=$RES/gpu_tensorcore.log

main() {
  echo "xdev OpenCL tensor cores $( [ $DRY = 1 ] && echo '(dry run)' ) — $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git')), results in $RES"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
  install_wheels "$WORK/site" "pyopencl may be missing"
  export PYTHONPATH="$REPO:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  unset XDEV_CUDA_TF32 XDEV_OPENCL_TF32 XDEV_OPENCL_KERNELS
  use_nvidia_opencl || echo "the default OpenCL device stands in (no tensor cores there: the rows say why)"
  # A fresh proof (it runs the tensor-core check) with its verdict kept beside the results.
  export XDEV_CACHE_DIR=$WORK/cache XDEV_OPENCL_PROOF_TIMEOUT=40
  rm -rf "$XDEV_CACHE_DIR"
  local n=4096 rounds=5 repeat=5 share=$(( (BUDGET - 30) / 2 ))
  [ $DRY = 1 ] && { n=256; rounds=2; repeat=2; }

  step "device and proof" 30 "$PY" - "$OCL_SEL" "$RES/device.json" <<'PYEOF'
import json, sys, time
t0 = time.time()
import xdev
info = {}
try:  # this device only (xdev.available_backends() would prove every OpenCL device)
    dev = xdev.asarray([1.0], backend=sys.argv[1])._dev
    info = dev.info()
    print(f"{dev.key} {dev.name}: opened and proven in {time.time() - t0:.1f} s")
    print({k: info.get(k) for k in ("driver", "tensor_cores", "tensor_core_reason", "tf32", "params_source")})
except Exception as e:
    print("OpenCL device:", type(e).__name__, e)
open(sys.argv[2], "w").write(json.dumps(info, indent=1, default=str))
PYEOF

  for mode in f16 tf32; do
    step "tensor-core GEMM $mode" $share "$PY" "$REPO/bench/tc_check.py" --mode $mode --opencl "$OCL_SEL" \
      --n $n --rounds $rounds --repeat $repeat --inner ${GPU_TC_INNER:-1} --budget $(( share - 5 )) --json "$RES/tc-$mode.json" \
      $( [ $DRY = 0 ] && echo --ptx "$RES/gemm_tc-$mode.ptx" )
  done
  echo; echo "=== done after $(elapsed)s (budget ${BUDGET}s); files in $RES:"; ls -l "$RES"
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
