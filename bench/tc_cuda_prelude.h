// Builds backends/opencl/tc_ptx.cl + gemm_tc.cl as CUDA C++ (nvcc, NVRTC/CuPy): the OpenCL
// kernel's own text, with the few OpenCL names it uses mapped onto CUDA. bench/tc_cuda.py
// times this twin beside the OpenCL build and cuBLAS; tests/backends/test_opencl_tc.py
// compiles it for sm_80 and sm_90.
typedef unsigned int uint;
typedef unsigned short ushort;
#define __global
#define __local
#define restrict __restrict__
#define TC_FN static __device__ __forceinline__
#define TC_ASM asm  // NVRTC knows no __asm__
#define TC_KERNEL extern "C" __global__ void __launch_bounds__(TC_NTHR)
#define TC_SHARED __shared__
#define TC_BARRIER() __syncthreads()
#define TC_UINT4(a, b, c, d) make_uint4((a), (b), (c), (d))
// float -> float16 bits, round to nearest even (no cuda_fp16.h: NVRTC need not find it)
static __device__ __forceinline__ ushort tc_f2h(float v) { ushort u; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(u) : "f"(v)); return u; }
#define TC_STORE_F16(v, p, i) ((p)[(i)] = tc_f2h(v))
#if TC_MODE == 32
#define TC_STORE2(a, b, p, i) (*(float2*)((float*)(p) + (i)) = make_float2((a), (b)))
#else
#define TC_STORE2(a, b, p, i) (*(uint*)((p) + (i)) = (uint)tc_f2h(a) | (uint)tc_f2h(b) << 16)
#endif
static __device__ __forceinline__ unsigned get_local_id(int d) { return d == 0 ? threadIdx.x : d == 1 ? threadIdx.y : threadIdx.z; }
static __device__ __forceinline__ unsigned get_group_id(int d) { return d == 0 ? blockIdx.x : d == 1 ? blockIdx.y : blockIdx.z; }
static __device__ __forceinline__ unsigned get_num_groups(int d) { return d == 0 ? gridDim.x : d == 1 ? gridDim.y : gridDim.z; }
