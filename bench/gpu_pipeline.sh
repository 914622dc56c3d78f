#!/usr/bin/env bash
# The input pipeline on one NVIDIA GPU (no network): the prefetch/pipeline tests on CUDA,
# the benchmark's pipeline and transfer ops on CUDA, and pinned downloads beside torch's
# where torch is installed. Run from the repository root; results go to $OUT (the device
# tool's folder) or bench/results/. Whole script < 6 min.
#
#   bash bench/gpu_pipeline.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
RES=${OUT:-$PWD/bench/results}
mkdir -p "$RES"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
exec > >(tee "$RES/gpu_pipeline.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "nvidia-smi: not found"

echo "=== pytest tests/contract/test_prefetch.py and the CUDA staging tests on CUDA"
XDEV_BACKEND=cuda XDEV_TEST_REQUIRE=cuda timeout -k 5 120 "$PY" -m pytest -q -ra -p no:cacheprovider \
  tests/contract/test_prefetch.py tests/backends/test_cuda_staging.py; echo "exit $?"

echo "=== bench: pipeline and transfers on CUDA"
timeout -k 5 240 "$PY" -m xdev.bench --backends cuda --ops pipeline,transfer \
  --json "$RES/pipeline-cuda.json" --plot "$RES/pipeline-cuda.png"; echo "exit $?"

echo "=== pinned download: xdev vs CuPy vs torch (64 MiB, float32)"
timeout -k 5 90 "$PY" - <<'PYEOF'
import time, numpy as np, xdev
n = (64 << 20) // 4
a = xdev.asarray(np.random.default_rng(0).standard_normal(n).astype(np.float32), backend="cuda")
dev = a._dev
pinned = dev.pinned_empty((n,), np.float32)
pageable = np.empty(n, np.float32)
def bw(fn, reps=20):
    fn(); dev.synchronize(); ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); dev.synchronize(); ts.append(time.perf_counter() - t0)
    return n * 4 / sorted(ts)[len(ts) // 2] / 1e9
import cupy
rows = {"xdev numpy(out=pinned)": lambda: a.numpy(out=pinned),
        "xdev numpy() pageable, staged": lambda: a.numpy(),
        "cupy get() pageable (unstaged)": lambda: a.data.get(),
        "cupy get(out=pinned)": lambda: a.data.get(out=pinned)}
try:
    import torch
    t = torch.from_numpy(pageable).cuda(); tp = torch.empty(n, dtype=torch.float32).pin_memory()
    rows["torch copy_ into pinned"] = lambda: tp.copy_(t)
    rows["torch .cpu() pageable"] = lambda: t.cpu()
except Exception as e:
    print("torch: not available here:", e)
for _ in range(2):  # ABAB: two rounds
    for k, fn in rows.items():
        print(f"{k:34s} {bw(fn):7.1f} GB/s")
np.testing.assert_array_equal(a.numpy(), a.data.get())
PYEOF
echo "exit $?"
