#!/usr/bin/env bash
# CUDA vs OpenCL on one NVIDIA GPU: tune xdev's OpenCL GPU kernels within a bounded
# time, check them on NVIDIA's OpenCL driver, then time float32 GEMM 2048^3/4096^3 (cuBLAS,
# xdev OpenCL, CLBlast) and VGG-16 at batch 16 (cuDNN strict fp32, OpenCL gemm and direct)
# interleaved in one process, and print the targets. About 5 minutes on an H100.
# Sibling of gpu_check.sh (same machine assumptions: no network, Python 3.12 with cupy-cuda13x).
#
#   here:   bash bench/gpu_prepare.sh               # .whl/ (pyopencl, ...) and .deb/ (CLBlast, loader)
#   there:  bash bench/gpu_opencl.sh                # from the repository root, .whl/ and .deb/ beside it
#   dry run on any machine: PYTHON=.venv/bin/python bash bench/gpu_opencl.sh --dry-run
#
# Results land in $OUT when set (the device tool), else bench/results/gpu-opencl-<date>/
# (a dry run: /tmp/xdev_gpu_opencl/results-dry/):
# gpu_opencl.log, compare.json (every timing and the targets), opencl-tuning.json (the tuned
# parameters, keyed by device name, platform and driver version), tune.log, pytest.log.
# To reuse the tuned parameters elsewhere: XDEV_CACHE_DIR=<that folder>.
# Budget: GPU_OPENCL_BUDGET_S (default 420 s) for the whole script, GPU_OPENCL_TUNE_S (default
# 170 s) for the search.
# Sets -uo pipefail, REPO (cwd: the repository root), DRY and PY; defines the helpers below.
. "$(dirname "$0")/gpu_common.sh"
WORK=${GPU_OPENCL_WORK:-/tmp/xdev_gpu_opencl}
if [ $DRY = 1 ]; then RES=${OUT:-$WORK/results-dry}; else RES=${OUT:-$REPO/bench/results/gpu-opencl-$(date -u +%Y-%m-%d)}; fi
BUDGET=${GPU_OPENCL_BUDGET_S:-420}
TUNE_S=${GPU_OPENCL_TUNE_S:-170}
START=$(date +%s)
mkdir -p "$RES" "$WORK"
LOG=$RES/gpu_opencl.log

main() {
  echo "xdev GPU OpenCL vs CUDA $( [ $DRY = 1 ] && echo '(dry run)' ) — $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git')), results in $RES"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv

  # -- Python packages: carried wheels, and xdev from the checkout --------------------------
  local site=$WORK/site
  install_wheels "$site" "pyopencl may be missing"
  export PYTHONPATH="$REPO:$site${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  # Strict float32 on the CUDA side: the comparison is FMA units against FMA units.
  unset XDEV_CUDA_TF32 XDEV_CUDNN_FAST

  # cuDNN: the frontend looks on LD_LIBRARY_PATH first; point it at the pip-installed library.
  local cudnn_dir
  cudnn_dir=$(pip_cudnn_dir)
  [ -n "$cudnn_dir" ] && export LD_LIBRARY_PATH="$cudnn_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "cuDNN library: ${cudnn_dir:-not found}"

  # -- CLBlast and Debian's ICD loader, carried as .debs and unpacked here (no root needed) --
  # CLBlast's tools crashed with the loader bundled in pyopencl's wheel and ran with Debian's,
  # so libclblast.so.1 resolves libOpenCL.so.1 from the unpacked ocl-icd package.
  if ls "$REPO"/.deb/*.deb >/dev/null 2>&1; then
    local root=$WORK/debroot
    rm -rf "$root"; mkdir -p "$root"
    for d in "$REPO"/.deb/*.deb; do dpkg -x "$d" "$root" || echo "!!! dpkg -x $d failed"; done
    local lib; lib=$(ls "$root"/usr/lib/*/libclblast.so.1 2>/dev/null | head -n 1)
    if [ -n "$lib" ]; then
      export XDEV_CLBLAST_LIB=$lib
      export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "CLBlast: $lib"
    else
      echo "CLBlast: no libclblast.so.1 in the carried .debs"
    fi
  else
    echo "CLBlast: no .deb/ here (bench/gpu_prepare.sh downloads libclblast1 and ocl-icd-libopencl1); the CLBlast rows are skipped"
  fi

  # -- NVIDIA's OpenCL driver: register it with the ICD loader if nobody did ------------------
  local ocl_sel
  if use_nvidia_opencl; then
    ocl_sel=$OCL_SEL
  elif [ $DRY = 1 ]; then
    ocl_sel=opencl
    echo "dry run: no NVIDIA OpenCL driver; the default OpenCL device with the GPU kernel family forced stands in"
    export XDEV_OPENCL_KERNELS=gpu
  else
    echo "!!! nothing to compare"; return 1
  fi

  # Tuned parameters are stored with the results (and read from there by every later step).
  export XDEV_CACHE_DIR=$RES
  local tune_s=$TUNE_S sizes=2048,4096 batch=16 image=224 rounds=5 repeat=3 tests=(tests/backends/test_opencl.py tests/backends/test_opencl_xl.py)
  if [ $DRY = 1 ]; then  # the same steps at sizes a CPU finishes in a minute
    tune_s=25 sizes=128,256 batch=1 image=32 rounds=2 repeat=1 tests=(tests/backends/test_opencl_xl.py)
  fi

  step "versions" 60 "$PY" - "$ocl_sel" <<'PYEOF'
import sys, xdev
print("xdev", xdev.__version__, xdev.__file__)
for k, s in xdev.available_backends().items():
    print(f"  {k:7s} {'yes' if s.available else 'no '}  {s.reason}")
from xdev.backends.opencl import clblast
print("CLBlast:", clblast.library_path() or clblast.unavailable_reason())
PYEOF

  # 1. the search, bounded: GEMM at 4096^3, three VGG-16 layers at batch 8, xl/tiled crossover
  step "tune (budget ${tune_s}s)" $(( tune_s + 60 )) bash -o pipefail -c \
    "'$PY' -m xdev.tune --device '$ocl_sel' $( [ $DRY = 1 ] && echo --quick ) --budget $tune_s 2>&1 | tee '$RES/tune.log'"
  [ -f "$RES/opencl-tuning.json" ] && { echo "tuned parameters:"; cat "$RES/opencl-tuning.json"; }

  # 2. CUDA vs OpenCL, interleaved in one process, with the targets
  step "compare (GEMM $sizes, VGG-16 batch $batch)" 200 "$PY" "$REPO/bench/gpu_opencl_compare.py" \
    --opencl "$ocl_sel" --sizes "$sizes" --batch "$batch" --image "$image" --rounds "$rounds" \
    --repeat "$repeat" --json "$RES/compare.json"

  # 3. the OpenCL kernel tests on this driver, with the tuned parameters as defaults
  step "pytest OpenCL kernels" 120 bash -o pipefail -c "XDEV_BACKEND=$ocl_sel XDEV_HYPOTHESIS_PROFILE=ci \
    '$PY' -m pytest -q -x -p no:cacheprovider ${tests[*]} 2>&1 | tail -n 25 | tee '$RES/pytest.log'"

  # 4. the same GEMMs through the standard benchmark (its "clblast" rows), if time is left
  step "xdev.bench matmul" 90 "$PY" -m xdev.bench --backends "$ocl_sel,cuda" --ops matmul --sizes "$sizes" \
    --quick --json "$RES/bench_matmul.json"

  echo; echo "=== done after $(elapsed)s (budget ${BUDGET}s); files in $RES:"; ls -l "$RES"
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
