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

// a * b + c, fused into one instruction by the compiler where the target has FMA
// (contraction, not the library's fma(): see realv_u below).
#pragma OPENCL FP_CONTRACT ON
#define MADD(a, b, c) ((a) * (b) + (c))

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

// Batch index bt -> (i0, i1, i2) over dims (n0, n1, n2).
#define BATCH3(bt, n1, n2) \
    const int i2 = (bt) % (n2), i1 = ((bt) / (n2)) % (n1), i0 = (bt) / ((n1) * (n2))

// ---- CPU family (-DVW vector width; -DMR x -DNV micro-tile of MR rows, NV vectors) -----
#ifdef VW
typedef CAT(REAL_T, VW) realv;
// The same vector type at element alignment: a dereference is an unaligned vector load
// or store the compiler emits itself. vloadn/vstoren and fma are kernel-library functions,
// and pip's PoCL 3.0 (LLVM 14) calls them out of line: every multiply-add of the
// micro-kernel was a call, with the accumulators spilled around it (0.11x NumPy).
typedef realv __attribute__((aligned(sizeof(real)))) realv_u;
#define VLOAD(i, p) (*((const __global realv_u*)(p) + (i)))
#if OUT_BITS == 16
#define VSTORE(v, i, p) CAT(CAT(vstore_half, VW), _rte)((v), (i), (p))
#elif OUT_BITS == REAL_BITS
#define VSTORE(v, i, p) (*((__global realv_u*)(p) + (i)) = (v))
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
            (acc)[i_][v_] = MADD(av_, (bv)[v_], (acc)[i_][v_]);          \
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

// ---- GPU throughput family "xl" (gemm_xl.cl, conv_xl.cl) ---------------------------------
// A work-group of NDIMC x MDIMC work-items computes an MWG x NWG tile of C; each work-item
// WPTM x WPTN outputs as VWM x VWN vectors spaced MDIMC/NDIMC vectors apart, so a warp's
// local-memory reads are consecutive vectors (no bank conflicts) and its stores to C are
// coalesced. Both operands sit in local memory k-major ([k][m] and [k][n], m and n
// contiguous, rows padded by PAD elements) and are read as whole vectors. The K loop is
// software-pipelined: the next KWG-deep slice is fetched into registers while the current
// one is multiplied; DB=1 keeps two local buffers so one barrier per slice suffices.
// The includer defines XL_FETCH_A(k0) / XL_FETCH_B(k0), which fill pa[LPTA] / pb[LPTB]
// (vectors number v = tid + r*NTHR of the slice; see XL_AV / XL_BV).
// Options: MWG NWG KWG MDIMC NDIMC VWM VWN PAD DB.
#ifdef MWG
#define WPTM (MWG / MDIMC)
#define WPTN (NWG / NDIMC)
#define NTHR (MDIMC * NDIMC)
#define MV (MWG / VWM)              /* vectors per k-row of the A slice */
#define NVV (NWG / VWN)             /* vectors per k-row of the B slice */
#define LDAV ((MWG + PAD) / VWM)    /* padded row length of As, in vectors */
#define LDBV ((NWG + PAD) / VWN)
#define LPTA (KWG * MV / NTHR)      /* A vectors each work-item fetches per slice */
#define LPTB (KWG * NVV / NTHR)
#if WPTM % VWM || WPTN % VWN || NTHR % MV || NTHR % NVV || PAD % VWM || PAD % VWN || LPTA < 1 || LPTB < 1
#error "xl tile parameters: need WPTM % VWM == 0, WPTN % VWN == 0, NTHR a multiple of MWG/VWM and NWG/VWN, PAD a multiple of both widths, KWG*MWG/VWM >= NTHR"
#endif
#define NBUF (DB ? 2 : 1)

#if VWM == 1
typedef real realm;
#define UNPACK_M(v, p) ((p)[0] = (v))
#else
typedef CAT(REAL_T, VWM) realm;
#define UNPACK_M(v, p) CAT(vstore, VWM)((v), 0, (p))
#endif
#if VWN == 1
typedef real realn;
#define UNPACK_N(v, p) ((p)[0] = (v))
#else
typedef CAT(REAL_T, VWN) realn;
#define UNPACK_N(v, p) CAT(vstore, VWN)((v), 0, (p))
#endif

// Slice coordinates of fetched vector r: k-row and vector column (constant column per
// work-item because NTHR is a multiple of the row length).
#define XL_AK(r) (tid / MV + (r) * (NTHR / MV))
#define XL_AV (tid % MV)
#define XL_BK(r) (tid / NVV + (r) * (NTHR / NVV))
#define XL_BV (tid % NVV)
// Work-item row i / column j of its outputs -> offset inside the work-group tile.
#define XL_ROW(i) ((((i) / VWM) * MDIMC + tm) * VWM + (i) % VWM)
#define XL_COL(j) ((((j) / VWN) * NDIMC + tn) * VWN + (j) % VWN)

// The whole K loop over KT slices; leaves the sums in acc[WPTM][WPTN].
#define XL_MAIN_LOOP(KT)                                                           \
    __local realm As[NBUF][KWG * LDAV];                                            \
    __local realn Bs[NBUF][KWG * LDBV];                                            \
    real acc[WPTM][WPTN];                                                          \
    _Pragma("unroll") for (int i_ = 0; i_ < WPTM; ++i_)                            \
        _Pragma("unroll") for (int j_ = 0; j_ < WPTN; ++j_) acc[i_][j_] = 0;       \
    realm pa[LPTA];                                                                \
    realn pb[LPTB];                                                                \
    XL_FETCH_A(0);                                                                 \
    XL_FETCH_B(0);                                                                 \
    for (int t_ = 0; t_ < (KT); ++t_) {                                            \
        const int s_ = DB ? (t_ & 1) : 0;                                          \
        _Pragma("unroll") for (int r_ = 0; r_ < LPTA; ++r_)                        \
            As[s_][XL_AK(r_) * LDAV + XL_AV] = pa[r_];                             \
        _Pragma("unroll") for (int r_ = 0; r_ < LPTB; ++r_)                        \
            Bs[s_][XL_BK(r_) * LDBV + XL_BV] = pb[r_];                             \
        barrier(CLK_LOCAL_MEM_FENCE);                                              \
        if (t_ + 1 < (KT)) {                                                       \
            XL_FETCH_A((t_ + 1) * KWG);                                            \
            XL_FETCH_B((t_ + 1) * KWG);                                            \
        }                                                                          \
        __local const realm* as_ = As[s_] + tm;                                    \
        __local const realn* bs_ = Bs[s_] + tn;                                    \
        _Pragma("unroll") for (int kk_ = 0; kk_ < KWG; ++kk_) {                    \
            real ar_[WPTM], br_[WPTN];                                             \
            _Pragma("unroll") for (int w_ = 0; w_ < WPTM / VWM; ++w_)              \
                UNPACK_M(as_[kk_ * LDAV + w_ * MDIMC], ar_ + w_ * VWM);            \
            _Pragma("unroll") for (int w_ = 0; w_ < WPTN / VWN; ++w_)              \
                UNPACK_N(bs_[kk_ * LDBV + w_ * NDIMC], br_ + w_ * VWN);            \
            _Pragma("unroll") for (int i_ = 0; i_ < WPTM; ++i_)                    \
                _Pragma("unroll") for (int j_ = 0; j_ < WPTN; ++j_)                \
                    acc[i_][j_] = fma(ar_[i_], br_[j_], acc[i_][j_]);              \
        }                                                                          \
        if (!DB) barrier(CLK_LOCAL_MEM_FENCE);                                     \
    }
#endif
