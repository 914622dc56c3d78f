// Prepended to every .cu file of xdev's CUDA backend (kernels.py, like OpenCL's common.cl):
// the kernel definition macros, the float16 storage type and the storage <-> accumulator
// conversions. NVRTC (CuPy) gets the two files as one text, so no include path is needed;
// the test suite compiles the same text with nvcc and NVRTC, and runs it in a host emulation
// (XDEV_HOST_EMULATION: its harness defines the macros and the float16 conversions).

#ifndef XDEV_HOST_EMULATION
#define XDEV_KERNEL(THREADS) extern "C" __global__ void __launch_bounds__(THREADS)
#define XDEV_SYNC() __syncthreads()
#define XDEV_DYNAMIC_SMEM(NAME) extern __shared__ xdev_chunk16 NAME[]
#endif

typedef unsigned short xdev_half;  // IEEE binary16 bits: float16 data is stored, never computed on

// 16 bytes, 16-byte aligned: the unit of dynamic shared memory and of vector loads from it.
struct alignas(16) xdev_chunk16 {
    unsigned int w[4];
};

// ---- storage <-> accumulator conversions: float16 and float32 accumulate in float -------------
__device__ __forceinline__ float xdev_load(xdev_half h)
{
#ifdef XDEV_HOST_EMULATION
    return xdev_emu_h2f(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}
__device__ __forceinline__ float xdev_load(float v) { return v; }
__device__ __forceinline__ double xdev_load(double v) { return v; }

template <typename T, typename A> __device__ __forceinline__ T xdev_store(A v);
template <> __device__ __forceinline__ xdev_half xdev_store<xdev_half, float>(float f)
{
#ifdef XDEV_HOST_EMULATION
    return xdev_emu_f2h(f);
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}
template <> __device__ __forceinline__ float xdev_store<float, float>(float v) { return v; }
template <> __device__ __forceinline__ double xdev_store<double, double>(double v) { return v; }
