#!/usr/bin/env bash
# Compile xdev's GPU-family OpenCL kernels for an NVIDIA GPU without one: clang (OpenCL C 1.2,
# target nvptx64-nvidia-nvcl) -> LLVM's PTX back end -> ptxas, and print per variant the
# registers, spills and shared memory, and whether the local loads are vectors. This is not
# NVIDIA's OpenCL compiler, but the same kind of code generation: a variant that spills or
# calls out of line here deserves a look before a GPU run.
#
#   bash bench/opencl_ptx_check.sh                  # the defaults and a few tuner candidates
#   ARCH=sm_90 CLANG=clang-15 LLC=/usr/lib/llvm-15/bin/llc bash bench/opencl_ptx_check.sh
# Needs clang and llc (LLVM >= 14) and ptxas (CUDA toolkit).
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG=${CLANG:-$(command -v clang-15 || command -v clang)}
LLC=${LLC:-$(command -v llc-15 || command -v llc || echo /usr/lib/llvm-15/bin/llc)}
ARCH=${ARCH:-sm_90}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# The OpenCL built-ins xdev's kernels use, mapped onto NVVM (the driver supplies these).
cat >"$T/shim.cl" <<'CL'
void __syncthreads(void) __asm("llvm.nvvm.barrier0");
#define AI __attribute__((overloadable, always_inline))
size_t AI get_local_id(uint d) { return d == 0 ? __nvvm_read_ptx_sreg_tid_x() : d == 1 ? __nvvm_read_ptx_sreg_tid_y() : __nvvm_read_ptx_sreg_tid_z(); }
size_t AI get_group_id(uint d) { return d == 0 ? __nvvm_read_ptx_sreg_ctaid_x() : d == 1 ? __nvvm_read_ptx_sreg_ctaid_y() : __nvvm_read_ptx_sreg_ctaid_z(); }
void AI barrier(cl_mem_fence_flags f) { __syncthreads(); }
float AI fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
double AI fma(double a, double b, double c) { return __builtin_fma(a, b, c); }
#define VLS(T, N) \
  void AI vstore##N(T##N v, size_t o, __private T* p) { T t[N]; *(__private T##N*)t = v; for (int i = 0; i < N; ++i) p[N * o + i] = t[i]; } \
  T##N AI vload##N(size_t o, const __private T* p) { T t[N]; for (int i = 0; i < N; ++i) t[i] = p[N * o + i]; return *(__private T##N*)t; }
VLS(float, 2) VLS(float, 4) VLS(float, 8) VLS(double, 2) VLS(double, 4) VLS(double, 8)
CL

check() {  # FILE OPTIONS...
  local f=$1; shift
  cat "$T/shim.cl" backends/opencl/common.cl "backends/opencl/$f" >"$T/k.cl"
  if ! "$CLANG" -x cl -cl-std=CL1.2 -target nvptx64-nvidia-nvcl -O3 -S -emit-llvm -Xclang -finclude-default-header \
       "$@" "$T/k.cl" -o "$T/k.ll" 2>"$T/err"; then
    echo "$f $*: clang failed"; head -5 "$T/err"; return 1
  fi
  "$LLC" -O3 -march=nvptx64 -mcpu=sm_80 "$T/k.ll" -o "$T/k.ptx"
  local info calls vec
  info=$(ptxas -arch="$ARCH" -v "$T/k.ptx" -o /dev/null 2>&1 | grep -E "registers|spill" | tr -s ' ' | tr '\n' ' ')
  calls=$(grep -c "call.uni" "$T/k.ptx" || true)
  vec=$(grep -cE "ld\.shared\.v[248]" "$T/k.ptx" || true)
  echo "$f ${*//-D/}"
  echo "    $info| out-of-line calls: $calls | vector local loads: $vec"
}

F32="-DREAL_BITS=32 -DIN_BITS=32 -DOUT_BITS=32"
F64="-DREAL_BITS=64 -DIN_BITS=64 -DOUT_BITS=64"
BIG="-DMWG=128 -DNWG=128 -DKWG=16 -DMDIMC=16 -DNDIMC=16 -DVWM=4 -DVWN=4 -DPAD=0 -DDB=1"
echo "ptxas $(ptxas --version | tail -n 1), target $ARCH"
check gemm_xl.cl $F32 $BIG
check conv_xl.cl $F32 $BIG
check conv_xl.cl $F32 -DMWG=64 -DNWG=256 -DKWG=16 -DMDIMC=8 -DNDIMC=32 -DVWM=4 -DVWN=4 -DPAD=0 -DDB=1
check gemm_xl.cl $F32 -DMWG=128 -DNWG=128 -DKWG=32 -DMDIMC=16 -DNDIMC=16 -DVWM=4 -DVWN=4 -DPAD=0 -DDB=0
check gemm_xl.cl $F32 -DMWG=64 -DNWG=64 -DKWG=16 -DMDIMC=8 -DNDIMC=8 -DVWM=4 -DVWN=4 -DPAD=0 -DDB=1
check gemm_xl.cl $F64 -DMWG=128 -DNWG=128 -DKWG=16 -DMDIMC=16 -DNDIMC=16 -DVWM=4 -DVWN=4 -DPAD=0 -DDB=0
check pack_gpu.cl $F32
