#!/usr/bin/env bash
# The input pipeline on one NVIDIA GPU (no network), in about a minute: the benchmark's
# pipeline op on CUDA (disk -> pinned staging -> GPU -> VGG-16 conv1_1+conv1_2, steady state)
# with the transfer section beside it, the prefetch tests on CUDA, and NumPy's pipeline on
# the host's cores with OpenBLAS three ways (why a thread-per-core BLAS and the readers
# contend: docs/pipeline.md). Prints last a short table: the pipeline's stages, its
# efficiency, and the staged upload against a plain upload from pinned memory (target >= 0.8x).
#
#   there:  bash bench/gpu_pipeline.sh              # from the repository root
#   here:   PYTHON=.venv-test/bin/python bash bench/gpu_pipeline.sh --dry-run
#           (no GPU: the same steps on numpy and OpenCL, to check the script and the table)
#
# Results in $OUT when the device tool sets it, else bench/results/: gpu_pipeline.log,
# pipeline-cuda.{json,png}, pipeline-cuda-pipeline.png, pipeline-numpy-{default,threads,nospin}.json.
# GPU_PIPELINE_BUDGET_S (default 90) bounds the whole script; steps run in priority order.
. "$(dirname "$0")/gpu_common.sh"
RES=${OUT:-$REPO/bench/results}
WORK=${GPU_PIPELINE_WORK:-/tmp/xdev_gpu_pipeline}
BUDGET=${GPU_PIPELINE_BUDGET_S:-90}
START=$(date +%s)
mkdir -p "$RES" "$WORK"
SUMMARY=$WORK/steps.tsv

main() {
  : >"$SUMMARY"
  echo "xdev GPU pipeline $( [ $DRY = 1 ] && echo '(dry run)' ) — $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git')), results in $RES"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "nvidia-smi: not found"
  echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  local cudnn_dir
  cudnn_dir=$(pip_cudnn_dir)
  [ -n "$cudnn_dir" ] && export LD_LIBRARY_PATH="$cudnn_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export XDEV_CACHE_DIR=${XDEV_CACHE_DIR:-$WORK/cache}

  # cap SECONDS: a step's timeout; a dry run on a shared CPU gets four times as long.
  cap() { if [ $DRY = 1 ]; then echo $(( $1 * 4 )); else echo "$1"; fi; }
  local gpu=cuda ops=pipeline,transfer small=()
  if [ $DRY = 1 ]; then
    gpu=numpy,opencl small=(--batch 4 --image 32)
    [ -z "${GPU_PIPELINE_BUDGET_S:-}" ] && BUDGET=300
    echo "dry run: the GPU run times --backends cuda; here --backends $gpu, with ${small[*]} (a shared CPU)"
  fi

  # 1. The pipeline figure on the GPU, and the transfer section in the same run.
  step "bench pipeline+transfer ($gpu)" "$(cap 45)" "$PY" -m xdev.bench --backends "$gpu" --ops "$ops" --quick "${small[@]}" \
    --json "$RES/pipeline-cuda.json" --plot "$RES/pipeline-cuda.png"

  # 2. NumPy's pipeline on this host's cores: OpenBLAS as it comes (a thread per core, each
  #    spinning ~2^28 cycles after a call before it sleeps), with one core per reader thread
  #    and one for the prefetch thread left free, and with its threads sleeping at once.
  local cores; cores=$(nproc)
  local fewer=$(( cores > 4 ? cores - 3 : 1 ))
  local numpy_bench=("$PY" -m xdev.bench --backends numpy --ops pipeline --quick "${small[@]}")
  step "numpy pipeline, OpenBLAS defaults" "$(cap 20)" "${numpy_bench[@]}" --json "$RES/pipeline-numpy-default.json"
  step "numpy pipeline, OPENBLAS_NUM_THREADS=$fewer" "$(cap 20)" env OPENBLAS_NUM_THREADS=$fewer \
    "${numpy_bench[@]}" --json "$RES/pipeline-numpy-threads.json"
  step "numpy pipeline, OPENBLAS_THREAD_TIMEOUT=4" "$(cap 20)" env OPENBLAS_THREAD_TIMEOUT=4 \
    "${numpy_bench[@]}" --json "$RES/pipeline-numpy-nospin.json"

  # 3. The prefetch and staging tests with the GPU present.
  local timeout_opt=()
  "$PY" -m pytest --help 2>/dev/null | grep -q -- "--timeout=" && timeout_opt=(--timeout=60)
  if [ $DRY = 1 ]; then
    step "pytest prefetch (dry run: the fake-CuPy staging tests)" 60 "$PY" -m pytest -q -p no:cacheprovider \
      "${timeout_opt[@]}" tests/backends/test_cuda_staging.py
  else
    step "pytest prefetch on cuda" 40 env XDEV_TEST_REQUIRE=cuda "$PY" -m pytest -q -ra -p no:cacheprovider \
      "${timeout_opt[@]}" -k "cuda or staging" tests/contract/test_prefetch.py tests/contract/test_prefetch_faults.py \
      tests/backends/test_cuda_staging.py
  fi

  echo
  echo "=== steps after $(elapsed)s (budget ${BUDGET}s) ==="
  column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
  echo
  "$PY" - "$RES" "$fewer" <<'EOF'
import glob, json, os, sys

res, fewer = sys.argv[1], sys.argv[2]


def load(name):
    p = os.path.join(res, name)
    return json.load(open(p)) if os.path.exists(p) else None


def ms(s):
    return f"{s * 1e3:8.3f}"


doc = load("pipeline-cuda.json")
if doc is None:
    print("no pipeline-cuda.json: the pipeline step did not finish")
else:
    rows = [r for r in doc["results"] if r["op"] == "pipeline"]
    h2d = {r["device"]: r for r in doc["results"] if r["op"] == "transfer"
           and r["algorithm"] == "host-to-device pinned"}
    for dev in dict.fromkeys(r["device"] for r in rows):
        st = {r["stage"]: r for r in rows if r["device"] == dev}
        pre = st["prefetched step"]
        print(f"pipeline on {dev} ({pre['device_name']}): batch {pre['batch_shape']}, {pre['layers']}, steady state "
              f"over batches {pre['fill_batches'] + 1}-{pre['steps']}, {pre['epochs']} epochs")
        print(f"  {'stage':28s} {'median ms':>9s} {'spread':>8s} {'GB/s':>7s}")
        for name in ("disk read cold", "disk stage", "upload", "upload pinned", "compute", "serial step",
                     "prefetched step"):
            if name in st:
                r = st[name]
                label = {"disk stage": f"disk, {r['workers']} readers", "upload": "upload, staged",
                         "upload pinned": "upload from pinned"}.get(name, name)
                gb = f"{r['gbps']:7.2f}" if r.get("gbps") else ""
                print(f"  {label:28s} {ms(r['median_s'])} {ms(r['spread_s'])} {gb:>7s}")
        flag = "  MEASUREMENT ERROR" if pre["measurement_error"] else ""
        print(f"  efficiency {pre['efficiency']:.2f} ± {pre['efficiency_spread']:.2f} (bottleneck: "
              f"{pre['bottleneck_stage']}), {pre['speedup']:.2f}x serial, target <= 1.15x bottleneck: "
              f"{pre['target']}{flag}")
        up = st["upload"]
        if up.get("vs_pinned") is not None:
            print(f"  upload, staged / upload from pinned (interleaved): {up['vs_pinned']:.2f} ± "
                  f"{up['vs_pinned_spread']:.2f}; target >= 0.8: {up.get('upload_target') or 'n/a on a CPU device'}")
        if dev in h2d:
            best = max((r for r in doc["results"] if r["op"] == "transfer" and r["device"] == dev
                        and r["algorithm"] == "host-to-device pinned"), key=lambda r: r["bytes"])
            print(f"  upload, staged / transfer section's pinned H2D at {best['bytes'] >> 20} MiB "
                  f"({best['gbps']:.1f} GB/s): {up['gbps'] / best['gbps']:.2f}")
print()
for name, label in (("pipeline-numpy-default.json", "OpenBLAS defaults"),
                    ("pipeline-numpy-threads.json", f"OPENBLAS_NUM_THREADS={fewer}"),
                    ("pipeline-numpy-nospin.json", "OPENBLAS_THREAD_TIMEOUT=4")):
    d = load(name)
    if d is None:
        print(f"numpy, {label}: no result")
        continue
    st = {r["stage"]: r for r in d["results"] if r["op"] == "pipeline"}
    pre, comp = st["prefetched step"], st["compute"]
    blas = next((x.get("blas") for x in d["machine"]["devices"] if x["device"] == "numpy"), "?")
    print(f"numpy, {label} ({blas}): compute alone {comp['median_s'] * 1e3:.2f} ms, beside the readers "
          f"{pre['compute_beside_readers_s'] * 1e3:.2f} ms; prefetched step {pre['median_s'] * 1e3:.2f} ± "
          f"{pre['spread_s'] * 1e3:.2f} ms; efficiency {pre['efficiency']:.2f} ± {pre['efficiency_spread']:.2f} "
          f"(bottleneck {pre['bottleneck_stage']}), target {pre['target']}")
EOF
}

main 2>&1 | tee "$RES/gpu_pipeline.log"
