// The PTX that gemm_tc.cl issues, one inline-asm helper per instruction (NVIDIA, sm_80+).
// NVIDIA's OpenCL compiler passes inline asm through to ptxas, as nvcc does (spelled
// TC_ASM: `__asm__`, which every C front end takes, GNU keywords on or off; CUDA's NVRTC
// knows only `asm`, and bench/tc_cuda_prelude.h says so); this file
// is also compiled as CUDA C (tests/backends/test_opencl_tc.py, bench/tc_check.py), so it uses
// only what both dialects share. A test harness that emulates these instructions on the
// CPU defines TC_EMULATION and its own versions instead.
//
// Shared-memory operands (ldmatrix, cp.async) take a 32-bit shared-window address. In
// OpenCL a __local pointer already is one (its integer value is the offset in the
// work-group's local memory, the address space .shared uses); CUDA's pointers are generic
// and are converted with __cvta_generic_to_shared.
#ifndef TC_EMULATION

#ifndef TC_FN
#define TC_FN static inline
#endif
#ifndef TC_ASM
#define TC_ASM __asm__
#endif
#if defined(__CUDACC__)
#define TC_SADDR(p) ((uint)__cvta_generic_to_shared(p))
#else
#define TC_SADDR(p) ((uint)(size_t)(p))
#endif

// d (4 floats, the C/D fragment) += a * b on the tensor cores of one warp (not volatile:
// registers in, registers out, so the compiler may schedule it among the fragment loads).
// TC_MODE 32: m16n8k8, A and B in TF32 (the low 13 bits of each float are not used);
// TC_MODE 16: m16n8k16, A and B as pairs of float16 in each 32-bit register.
#if TC_MODE == 32
#define TC_MMA_OP "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
#else
#define TC_MMA_OP "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
TC_FN void tc_mma(float* d, const uint* a, const uint* b)
{
    TC_ASM(TC_MMA_OP "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(d[0]), "f"(d[1]), "f"(d[2]), "f"(d[3]));
}

// Four 8x8 matrices of 16-bit elements from shared memory; lane 8j+i gives the address of
// row i of matrix j, and r[j] receives (row lane/4, elements 2*(lane%4) and +1) of matrix j.
// A 32-bit element is a pair of 16-bit ones, so for TF32 this loads 8x4 float blocks.
TC_FN void tc_ldsm_x4(uint* r, __local const uint4* p)
{
    TC_ASM volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(TC_SADDR(p)) : "memory");
}

// The same, transposed: r[j] receives (rows 2*(lane%4) and +1, column lane/4) of matrix j.
TC_FN void tc_ldsm_x4_trans(uint* r, __local const uint4* p)
{
    TC_ASM volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(TC_SADDR(p)) : "memory");
}

// 16 bytes global -> shared without registers; only the first `bytes` (0..16) are read,
// the rest of the destination is zero-filled.
TC_FN void tc_cp_async16(__local uint4* dst, __global const void* src, int bytes)
{
    TC_ASM volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(TC_SADDR(dst)), "l"(src), "r"(bytes) : "memory");
}

TC_FN void tc_cp_commit(void)
{
    TC_ASM volatile("cp.async.commit_group;" ::: "memory");
}

// Wait until at most N of this work-item's committed groups are still in flight
// (N a literal: the instruction takes an immediate).
#define TC_STR_(x) #x
#define TC_STR(x) TC_STR_(x)
#define TC_CP_WAIT(n) TC_ASM volatile("cp.async.wait_group " TC_STR(n) ";" ::: "memory")

// float bits -> TF32 bits, rounded to nearest (ties away from zero), NaN kept.
TC_FN uint tc_tf32(uint x)
{
    uint r;
    TC_ASM("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "r"(x));
    return r;
}

#endif  // TC_EMULATION
