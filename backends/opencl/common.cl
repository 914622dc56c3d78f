// Shared by every xdev OpenCL kernel (prepended to each source file).
// Build options choose the types:
//   -DREAL_BITS=32|64   compute type (float16 data computes in float)
//   -DIN_BITS=16|32|64  storage type of the inputs, -DOUT_BITS=... of the output
// float16 is storage only: vload_half/vstore_half need no cl_khr_fp16.
#if REAL_BITS == 64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#define REAL_T double
#else
#define REAL_T float
#endif
typedef REAL_T real;

#if IN_BITS == 16
typedef half in_t;
#define LOAD_IN(p, i) ((real)vload_half((i), (p)))
#elif IN_BITS == 64
typedef double in_t;
#define LOAD_IN(p, i) ((real)(p)[(i)])
#else
typedef float in_t;
#define LOAD_IN(p, i) ((real)(p)[(i)])
#endif

#if OUT_BITS == 16
typedef half out_t;
#define STORE_OUT(v, p, i) vstore_half_rte((float)(v), (i), (p))
#elif OUT_BITS == 64
typedef double out_t;
#define STORE_OUT(v, p, i) ((p)[(i)] = (double)(v))
#else
typedef float out_t;
#define STORE_OUT(v, p, i) ((p)[(i)] = (float)(v))
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

// Batch index bt -> (i0, i1, i2) over dims (n0, n1, n2).
#define BATCH3(bt, n1, n2) \
    const int i2 = (bt) % (n2), i1 = ((bt) / (n2)) % (n1), i0 = (bt) / ((n1) * (n2))

// ---- CPU family (-DVW vector width; -DMR x -DNV micro-tile of MR rows, NV vectors) -----
#ifdef VW
typedef CAT(REAL_T, VW) realv;
#define VLOAD CAT(vload, VW)
#if OUT_BITS == 16
#define VSTORE(v, i, p) CAT(CAT(vstore_half, VW), _rte)((v), (i), (p))
#else
#define VSTORE(v, i, p) CAT(vstore, VW)((v), (i), (p))
#endif
#endif

#if defined(MR) && defined(NV)
#define NR (VW * NV)
// acc[MR][NV] = 0, then acc[i][v] += a[i] * bv[v] for one k: the register-blocked
// micro-kernel shared by GEMM and implicit-GEMM convolution.
#define MICRO_ZERO(acc)                                                  \
    _Pragma("unroll") for (int i_ = 0; i_ < MR; ++i_)                    \
        _Pragma("unroll") for (int v_ = 0; v_ < NV; ++v_) (acc)[i_][v_] = (realv)(0)
#define MICRO_STEP(acc, a, bv)                                           \
    _Pragma("unroll") for (int i_ = 0; i_ < MR; ++i_) {                  \
        const realv av_ = (realv)((a)[i_]);                              \
        _Pragma("unroll") for (int v_ = 0; v_ < NV; ++v_)                \
            (acc)[i_][v_] = fma(av_, (bv)[v_], (acc)[i_][v_]);           \
    }
#endif

// ---- GPU family (-DTSM x -DTSN tile per work-group, -DWPTM x -DWPTN per work-item) -----
#ifdef TSM
#define RTSM (TSM / WPTM)
#define RTSN (TSN / WPTN)
#define NTHREADS (RTSM * RTSN)
// The work-group's two tiles in local memory and a work-item's zeroed accumulators.
#define TILE_SETUP(acc, As, Bs)                                          \
    __local real As[TSK][TSM];                                           \
    __local real Bs[TSK][TSN];                                           \
    real acc[WPTM][WPTN];                                                \
    for (int wm_ = 0; wm_ < WPTM; ++wm_)                                 \
        for (int wn_ = 0; wn_ < WPTN; ++wn_) (acc)[wm_][wn_] = 0
// acc[wm][wn] += As[k][tm + wm*RTSM] * Bs[k][tn + wn*RTSN] over one TSK-deep slice.
#define TILE_STEP(acc, As, Bs, tm, tn)                                   \
    for (int kk_ = 0; kk_ < TSK; ++kk_) {                                \
        real ar_[WPTM];                                                  \
        for (int wm_ = 0; wm_ < WPTM; ++wm_) ar_[wm_] = (As)[kk_][(tm) + wm_ * RTSM]; \
        for (int wn_ = 0; wn_ < WPTN; ++wn_) {                           \
            const real bv_ = (Bs)[kk_][(tn) + wn_ * RTSN];               \
            for (int wm_ = 0; wm_ < WPTM; ++wm_) (acc)[wm_][wn_] = fma(ar_[wm_], bv_, (acc)[wm_][wn_]); \
        }                                                                \
    }
#endif
