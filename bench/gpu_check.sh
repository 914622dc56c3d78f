#!/usr/bin/env bash
# xdev on a machine with one NVIDIA GPU and no network: the whole test suite on CUDA, the
# benchmark on CUDA (matmul sweep, VGG-16 conv layers at batch 16 with every algorithm,
# transfers) and on OpenCL through NVIDIA's OpenCL driver, and a float32 matmul TFLOP/s check.
# Everything is logged; results land in $OUT when the device tool sets it, else bench/results/.
#
#   here:   bash bench/gpu_prepare.sh          # wheels the GPU machine lacks -> .whl/
#   there:  bash bench/gpu_check.sh            # from the repository root, .whl/ beside it
#   dry run on any machine: PYTHON=.venv/bin/python bash bench/gpu_check.sh --dry-run
#
# The GPU machine's Python 3.12 has numpy, pytest, hypothesis, rich, matplotlib, cupy-cuda13x
# and cuDNN; the wheels from gpu_prepare.sh add pyopencl and the cuDNN frontend. xdev is not
# installed there: it is imported from the checkout. Each step runs under a
# timeout and the whole script stops within GPU_CHECK_BUDGET_S seconds (default 350: under 6
# min). Order = priority: versions, the conv tests on CUDA (pytest -n 8) in the default modes
# and in TF32, every CUDA target with its verdict (bench/cuda_targets.py, at most
# GPU_CHECK_TARGETS_S = 150 s; printed again as the last table), the rest of the test suite
# with what is left (at most 160 s), then the TFLOP/s check and the quick benchmarks while
# budget is left.
# Sets -uo pipefail, REPO (cwd: the repository root), DRY and PY; defines the helpers below.
. "$(dirname "$0")/gpu_common.sh"
RES=${OUT:-$REPO/bench/results}
WORK=${GPU_CHECK_WORK:-/tmp/xdev_gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-350}
START=$(date +%s)
mkdir -p "$RES" "$WORK"
LOG=$RES/gpu_check.log
SUMMARY=$WORK/steps.tsv

main() {
  : >"$SUMMARY"
  echo "xdev GPU check $( [ $DRY = 1 ] && echo '(dry run)' ) — $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git')), results in $RES"

  # -- the machine ----------------------------------------------------------------------------
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit --format=csv
  else
    echo "nvidia-smi: not found (no NVIDIA driver here)"
  fi
  "$PY" -c 'import sys, platform; print("python", sys.version.split()[0], platform.machine())'

  # -- Python packages: carried wheels, xdev from the checkout, the pip-installed cuDNN ----------
  python_env "$WORK/site" "OpenCL and cuDNN may be missing"

  # -- NVIDIA's OpenCL driver: register it with the ICD loader if nobody did -------------------
  local ocl_lib="" icd=/etc/OpenCL/vendors/nvidia.icd
  ocl_lib=$(nvidia_opencl_lib)
  local have_ocl=0
  if [ -n "$ocl_lib" ]; then
    have_ocl=1
    if [ -e "$icd" ]; then
      echo "OpenCL: $icd exists ($(cat "$icd"))"
    elif [ $DRY = 1 ]; then
      echo "dry run: would write $icd -> $ocl_lib"
    elif mkdir -p /etc/OpenCL/vendors 2>/dev/null && echo "$ocl_lib" >"$icd" 2>/dev/null; then
      echo "OpenCL: wrote $icd -> $ocl_lib"
    else  # read-only /etc: the ICD loader also reads OCL_ICD_VENDORS
      mkdir -p "$WORK/icd" && echo "$ocl_lib" >"$WORK/icd/nvidia.icd"
      export OCL_ICD_VENDORS=$WORK/icd
      echo "OpenCL: /etc is not writable; OCL_ICD_VENDORS=$OCL_ICD_VENDORS -> $ocl_lib"
    fi
  else
    echo "OpenCL: no libnvidia-opencl.so.1 on this machine; the OpenCL steps are skipped"
  fi

  # -- versions and availability ----------------------------------------------------------------
  step "versions" 60 "$PY" - <<'EOF'
import importlib, json
for name in ("numpy", "cupy", "cudnn", "pyopencl", "pytest", "hypothesis", "rich", "matplotlib"):
    try:
        m = importlib.import_module(name)
        print(f"{name:12s} {getattr(m, '__version__', getattr(m, 'VERSION_TEXT', '?'))}  {m.__file__}")
    except Exception as e:
        print(f"{name:12s} -- {type(e).__name__}: {e}")
import xdev
print("xdev", xdev.__version__, xdev.__file__)
for k, s in xdev.available_backends().items():
    print(f"  {k:7s} {'yes' if s.available else 'no '}  {s.reason}")
if xdev.available_backends()["cuda"].available:
    dev = xdev.asarray([1.0], backend="cuda")._dev
    print(json.dumps(dev.info(), indent=1, default=str))
EOF

  # -- tests and targets, in order of priority ----------------------------------------------------
  # 1. the conv tests on CUDA (forward and gradients, every algorithm) in the default numeric
  #    modes, then in TF32: the cuDNN paths the targets time run here first on a GPU, and their
  #    error / bound logs are the targets' contract-*-error rows; 2. every target with its verdict;
  # 3. the rest of the suite with what is left of the budget; 4. extras while budget is left.
  # pytest-timeout registers itself through its entry point (as "timeout"); naming it again
  # with -p pytest_timeout made pytest stop with "Plugin already registered under a different
  # name". Ask pytest whether the options exist instead. pytest-xdist runs it on 8 workers.
  local timeout_opt=() xdist=() session_opt=0 help
  help=$("$PY" -m pytest --help 2>/dev/null)
  grep -q -- "--timeout=" <<<"$help" && timeout_opt=(--timeout=150)
  grep -q -- "--session-timeout" <<<"$help" && session_opt=1
  "$PY" -c "import xdist" 2>/dev/null && xdist=(-n 8)
  # The cuDNN plan search is on by default; the suite's many small random shapes would each
  # build and time up to 2 x 8 plans, so the test runs bound it (the targets use the default).
  # Every numeric check logs its error / bound (tests/tolerance.py).
  local tune_env=(XDEV_CUDNN_AUTOTUNE_LIMIT=2 XDEV_CACHE_DIR="$WORK/cache-tests")
  local logs=("$RES/errors_conv.jsonl" "$RES/errors_conv_tf32.jsonl") rest_log=$RES/errors_rest.jsonl
  rm -f "${logs[@]}" "$rest_log"
  local conv_tests=(tests/contract/test_conv2d.py tests/contract/test_conv2d_backward.py)
  local test_env=(env "${tune_env[@]}" XDEV_BACKEND=cuda XDEV_TEST_REQUIRE=cuda XDEV_HYPOTHESIS_PROFILE=ci)
  if [ $DRY = 1 ]; then
    echo
    echo "dry run: the GPU run is: ${test_env[*]} XDEV_TEST_ERROR_LOG=${logs[0]} $PY -m pytest -q -ra ${xdist[*]} ${timeout_opt[*]} ${conv_tests[*]}"
    echo "dry run: then the same in TF32: XDEV_CUDA_TF32=1 XDEV_TEST_ERROR_LOG=${logs[1]} ..."
    echo "dry run: running the CUDA tests with the default backend instead (no GPU here)"
    step "pytest (dry run: tests/backends/test_cuda*.py)" 240 env "${tune_env[@]}" XDEV_HYPOTHESIS_PROFILE=ci \
      "$PY" -m pytest -q -ra -p no:cacheprovider "${timeout_opt[@]}" tests/backends/test_cuda.py \
      tests/backends/test_cuda_emulator.py tests/backends/test_cuda_cudnn_tune.py tests/backends/test_cuda_modes.py \
      tests/backends/test_cuda_cudnn_conv.py tests/backends/test_cuda_cudnn_grad.py \
      tests/backends/test_cuda_gemm_plan.py tests/backends/test_cuda_device_cublas.py \
      tests/backends/test_cuda_backward.py
  else
    step "conv tests on CUDA (default numeric modes)" 75 "${test_env[@]}" XDEV_TEST_ERROR_LOG="${logs[0]}" \
      "$PY" -m pytest -q -ra -p no:cacheprovider "${xdist[@]}" "${timeout_opt[@]}" "${conv_tests[@]}"
    step "conv tests in TF32 (XDEV_CUDA_TF32=1)" 60 "${test_env[@]}" XDEV_CUDA_TF32=1 XDEV_TEST_ERROR_LOG="${logs[1]}" \
      "$PY" -m pytest -q -ra -p no:cacheprovider "${xdist[@]}" "${timeout_opt[@]}" "${conv_tests[@]}"
  fi

  # -- the CUDA targets with their verdicts: xdev vs torch, CuPy and cuBLAS, interleaved ---------
  # A fresh plan cache, so the first calls show the search cost; the script skips the sections
  # its budget does not reach and reports them as not measured. The error logs of the tests
  # above are read even where a step was cut short (one line per check).
  local error_logs=() tcache=$WORK/cache-targets proof_dir tcap
  for f in "${logs[@]}"; do [ -e "$f" ] && error_logs+=(--error-log "$f"); done
  # The targets' cache is fresh (no cuDNN plan, no OpenCL tuning: "untuned" means it), but the
  # OpenCL device proof the versions step made is reused: its verdict is per device, driver and
  # kernel source, and proving NVIDIA's OpenCL device again would cost the budget seconds.
  rm -rf "$tcache"; mkdir -p "$tcache"
  proof_dir=$("$PY" -c "from xdev.contract import env; print(env.cache_dir() / 'opencl-proof')" 2>/dev/null)
  [ -n "$proof_dir" ] && [ -d "$proof_dir" ] && cp -r "$proof_dir" "$tcache/"
  tcap=${GPU_CHECK_TARGETS_S:-150}
  if [ $DRY = 1 ]; then
    # Every section's code on the fakes (the OpenCL GEMM on the default OpenCL device, small);
    # the pipeline section needs a real CUDA device in its child and says so.
    step "cuda targets (dry run, on faked CuPy and cuDNN)" 150 "$PY" bench/cuda_targets.py --fake \
      --host-calls 20 --budget-s 130 --opencl-device opencl --sgemm-n 256 --out "$RES" "${error_logs[@]}"
  else
    step "cuda targets" "$tcap" env XDEV_CACHE_DIR="$tcache" \
      "$PY" bench/cuda_targets.py --out "$RES" --budget-s $(( tcap - 10 )) "${error_logs[@]}"
  fi

  # -- the rest of the test suite with CUDA as the default backend --------------------------------
  # With what is left (at most 160 s); pytest-timeout's session timeout, where it has one, ends
  # the run between tests before the step's timeout would, so its summary is still printed.
  local left t session=()
  left=$(( BUDGET - $(elapsed) - 10 ))
  t=$(( left < 160 ? left : 160 ))
  [ $session_opt = 1 ] && [ $t -gt 30 ] && session=(--session-timeout=$(( t - 20 )))
  if [ $DRY = 1 ]; then
    echo
    echo "dry run: the GPU run is: ${test_env[*]} XDEV_TEST_ERROR_LOG=$rest_log $PY -m pytest -q -ra ${xdist[*]} ${timeout_opt[*]} ${session[*]} --durations=15 --ignore=${conv_tests[0]} --ignore=${conv_tests[1]}"
  else
    step "the rest of the suite (XDEV_BACKEND=cuda)" 160 "${test_env[@]}" XDEV_TEST_ERROR_LOG="$rest_log" \
      "$PY" -m pytest -q -ra -p no:cacheprovider "${xdist[@]}" --durations=15 "${timeout_opt[@]}" "${session[@]}" \
      --ignore="${conv_tests[0]}" --ignore="${conv_tests[1]}"
  fi

  # -- matmul TFLOP/s through xdev, timed with CUDA events ----------------------------------------
  step "matmul TFLOP/s" 60 "$PY" - "$RES/matmul_tflops.json" "$DRY" <<'EOF'
import json, os, subprocess, sys
import numpy as np
import xdev
out_path, dry = sys.argv[1], sys.argv[2] == "1"
status = xdev.available_backends()["cuda"]
if not status.available:
    print(f"cuda unavailable: {status.reason}" + (" (expected in a dry run)" if dry else ""))
    raise SystemExit(0 if dry else 1)
CODE = r'''
import json, sys
import numpy as np, xdev
rows = []
for dtype in sys.argv[1].split(","):
    for n in (4096, 8192):
        rng = np.random.default_rng(n)
        a = xdev.asarray(rng.standard_normal((n, n)).astype(dtype), backend="cuda")
        b = xdev.asarray(rng.standard_normal((n, n)).astype(dtype), backend="cuda")
        dev = a._dev
        xdev.matmul(a, b); dev.synchronize()          # warm-up (cuBLAS heuristics, handles)
        t = sorted(dev.elapsed(lambda: xdev.matmul(a, b), 10))
        med = t[len(t) // 2]
        rows.append(dict(n=n, dtype=dtype, median_ms=med * 1e3, min_ms=t[0] * 1e3, tflops=2 * n**3 / med / 1e12))
print(json.dumps(rows))
'''
results = []
for label, env, dtypes in (("fp32", {}, "float32"), ("tf32 (XDEV_CUDA_TF32=1)", {"XDEV_CUDA_TF32": "1"}, "float32"),
                           ("fp16/fp64", {}, "float16,float64")):
    r = subprocess.run([sys.executable, "-c", CODE, dtypes], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=120)
    if r.returncode != 0:
        print(f"{label}: failed\n{r.stderr[-2000:]}")
        continue
    for row in json.loads(r.stdout.strip().splitlines()[-1]):
        row["mode"] = label
        results.append(row)
        print(f"{label:26s} {row['dtype']:8s} n={row['n']:5d}  {row['median_ms']:8.2f} ms  {row['tflops']:7.1f} TFLOP/s")
info = xdev.asarray([1.0], backend="cuda")._dev.info()
json.dump({"device": info, "results": results}, open(out_path, "w"), indent=1, default=str)
print("wrote", out_path)
EOF

  # -- the benchmark: CUDA, then OpenCL on the same GPU -----------------------------------------
  local bench_cuda=("$PY" -m xdev.bench --backends cuda --quick --ops matmul,conv2d,transfer
                    --json "$RES/bench_cuda.json" --plot "$RES/bench_cuda.png")
  local bench_ocl=("$PY" -m xdev.bench --backends opencl --quick --ops matmul,conv2d,transfer
                   --json "$RES/bench_opencl.json" --plot "$RES/bench_opencl.png")
  if [ $DRY = 1 ]; then
    echo
    echo "dry run: the GPU run is: ${bench_cuda[*]}"
    echo "dry run: then, with NVIDIA's OpenCL: ${bench_ocl[*]}"
    step "bench CLI accepts the flags (--help)" 60 "$PY" -m xdev.bench --help
  else
    step "bench cuda" 90 env XDEV_CACHE_DIR="$WORK/cache-targets" "${bench_cuda[@]}"
    if [ $have_ocl = 1 ]; then
      step "bench opencl (NVIDIA OpenCL)" 60 "${bench_ocl[@]}"
    fi
  fi

  # -- summary ---------------------------------------------------------------------------------
  echo
  echo "=== summary after $(elapsed)s (budget ${BUDGET}s) ==="
  column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
  "$PY" - "$SUMMARY" "$RES/gpu_check_summary.json" "$DRY" "$(elapsed)" <<'EOF'
import json, sys
steps = [dict(zip(("step", "exit", "seconds"), line.rstrip("\n").split("\t"))) for line in open(sys.argv[1]) if line.strip()]
json.dump({"dry_run": sys.argv[3] == "1", "seconds": int(sys.argv[4]), "steps": steps}, open(sys.argv[2], "w"), indent=1)
print("wrote", sys.argv[2])
EOF
  echo "files in $RES:"; ls -l "$RES"
  # The targets, last: what this run was for.
  [ -e "$RES/cuda_targets.json" ] && "$PY" - "$RES/cuda_targets.json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
print(f"\n=== CUDA targets ({doc.get('seconds', 0):.0f} s of measuring) ===")
for name, r in doc["targets"].items():
    mark = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[r["met"]]
    ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.4g}"
    print(f"  {name:28s} {ratio:>9s}  need {r['target']:8s} {mark:12s} {r['detail'][:110]}")
EOF
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
