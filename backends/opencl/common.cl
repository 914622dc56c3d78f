// Shared by every xdev OpenCL kernel (prepended to each source file).
// Build options choose the types:
//   -DREAL_BITS=32|64   compute type (float16 data computes in float)
//   -DIN_BITS=16|32|64  storage type of the inputs, -DOUT_BITS=... of the output
// float16 is storage only: vload_half/vstore_half need no cl_khr_fp16.
// Or, for integer and bool data (gemm_small.cl, conv_int.cl), -DXT_BITS=8|16|32|64 and
// -DXT_BOOL=0|1: exact arithmetic modulo 2^XT_BITS, NumPy's wrap-around. Every integer type
// is handled as the unsigned type of its width: unsigned arithmetic wraps by definition
// (signed overflow is undefined in OpenCL C), and the low bits of a sum of products are the
// same whether the operands were signed or not (two's complement). Sums run in 32 bits (64
// for 64-bit data) and are truncated on store. Bool data (bytes) counts nonzero as 1 and
// stores sum != 0: NumPy's logical matmul, or of ands. `real`, `in_t`, `out_t`, LOAD_IN,
// STORE_OUT and MADD (multiply-add) mean the same in both.
// Or, for copy.cl's copy_cast between types one of which is an integer or bool (between
// float types it uses the options above), -DSRC_KIND and -DDST_KIND (0 float, 1 signed
// integer, 2 unsigned integer, 3 bool) with -DSRC_BITS and -DDST_BITS (8-64; float: 16
// storage only, 32, 64), converting as NumPy's astype: integer -> integer: the value modulo
// 2^bits of the destination (sign-extended when widened from a signed type); -> bool:
// nonzero (NaN too); bool -> anything: 0 or 1; integer -> float: round to nearest even
// (float16: through float, exact below 2^24, so one rounding); float -> integer: truncated
// toward zero, saturated at the type's range, NaN -> 0 (NumPy leaves out-of-range values
// undefined).
#ifdef XT_BITS
#if XT_BITS == 8
typedef uchar xt;
#elif XT_BITS == 16
typedef ushort xt;
#elif XT_BITS == 32
typedef uint xt;
#else
typedef ulong xt;
#endif
#if XT_BITS == 64
typedef ulong real;
#else
typedef uint real;
#endif
typedef xt in_t;
typedef xt out_t;
#if XT_BOOL
#define LOAD_IN(p, i) ((real)((p)[(i)] != 0))
#define STORE_OUT(v, p, i) ((p)[(i)] = (xt)((v) != 0))
#else
#define LOAD_IN(p, i) ((real)(p)[(i)])
#define STORE_OUT(v, p, i) ((p)[(i)] = (xt)(v))
#endif

#elif defined(SRC_KIND)
#if SRC_KIND == 0 && SRC_BITS == 64 || DST_KIND == 0 && DST_BITS == 64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

// The storage type of each side (unsigned for integers: stores wrap by definition) and the
// type a source value is read as (its true type: signed types sign-extend when widened).
#if SRC_KIND == 0
#  if SRC_BITS == 16
typedef half src_store;
#    define LOAD_SRC(p, i) vload_half((i), (p))
#  elif SRC_BITS == 32
typedef float src_store;
#    define LOAD_SRC(p, i) ((p)[(i)])
#  else
typedef double src_store;
#    define LOAD_SRC(p, i) ((p)[(i)])
#  endif
#else
#  if SRC_BITS == 8
typedef uchar src_store;
typedef char src_signed;
#  elif SRC_BITS == 16
typedef ushort src_store;
typedef short src_signed;
#  elif SRC_BITS == 32
typedef uint src_store;
typedef int src_signed;
#  else
typedef ulong src_store;
typedef long src_signed;
#  endif
#  if SRC_KIND == 1
#    define LOAD_SRC(p, i) ((src_signed)(p)[(i)])
#  elif SRC_KIND == 2
#    define LOAD_SRC(p, i) ((p)[(i)])
#  else
#    define LOAD_SRC(p, i) ((uchar)((p)[(i)] != 0))
#  endif
#endif

#if DST_KIND == 0
#  if DST_BITS == 16
typedef half dst_store;
#    define STORE_DST(v, p, i) vstore_half_rte((float)(v), (i), (p))
#  elif DST_BITS == 32
typedef float dst_store;
#    define STORE_DST(v, p, i) ((p)[(i)] = (float)(v))
#  else
typedef double dst_store;
#    define STORE_DST(v, p, i) ((p)[(i)] = (double)(v))
#  endif
#elif DST_KIND == 3
typedef uchar dst_store;
#  define STORE_DST(v, p, i) ((p)[(i)] = (uchar)((v) != 0))
#else
#  if DST_BITS == 8
typedef uchar dst_store;
#    define SAT(v) (DST_KIND == 1 ? (uchar)convert_char_sat_rtz(v) : convert_uchar_sat_rtz(v))
#  elif DST_BITS == 16
typedef ushort dst_store;
#    define SAT(v) (DST_KIND == 1 ? (ushort)convert_short_sat_rtz(v) : convert_ushort_sat_rtz(v))
#  elif DST_BITS == 32
typedef uint dst_store;
#    define SAT(v) (DST_KIND == 1 ? (uint)convert_int_sat_rtz(v) : convert_uint_sat_rtz(v))
#  else
typedef ulong dst_store;
#    define SAT(v) (DST_KIND == 1 ? (ulong)convert_long_sat_rtz(v) : convert_ulong_sat_rtz(v))
#  endif
#  if SRC_KIND == 0
#    define STORE_DST(v, p, i) ((p)[(i)] = SAT(v))
#  else
#    define STORE_DST(v, p, i) ((p)[(i)] = (dst_store)(v))
#  endif
#endif
typedef src_store in_t;
typedef dst_store out_t;
typedef float real;  // (copy.cl's fill is not used with these options)
#define LOAD_IN(p, i) LOAD_SRC(p, i)
#define STORE_OUT(v, p, i) STORE_DST(v, p, i)

#else
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

// Element offset of contiguous element i of a view of up to 4 dims: sizes (n0,) n1, n2, n3
// and element strides s0..s3 (copy.cl).
inline long view4_offset(long i, const long n1, const long n2, const long n3,
                         const long s0, const long s1, const long s2, const long s3)
{
    const long i3 = i % n3; i /= n3;
    const long i2 = i % n2; i /= n2;
    const long i1 = i % n1; i /= n1;
    return i * s0 + i1 * s1 + i2 * s2 + i3 * s3;
}

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
