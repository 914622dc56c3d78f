// Tensor-core GEMM ("tc") for NVIDIA GPUs of compute capability 8.0+, through the inline
// PTX of tc_ptx.cl: C = A @ B per batch, A row-major [M][K] (k contiguous, row stride lda),
// B row-major [K][N] (n contiguous, row stride ldb), C contiguous [M][N]. Rows and the
// operands' bases are 16-byte aligned (gemm.py packs any other operand into that form);
// M, N and K are arbitrary: edge chunks are partly or wholly zero-filled.
//
// A work-group of WM x WN warps computes a BM x BN tile of C; each warp a (BM/WM) x (BN/WN)
// tile as MT x NT mma tiles of 16 x 8, accumulated in float registers. The K loop walks
// BK-deep slices through STAGES shared-memory buffers:
//   ASYNC=1  cp.async copies slice t+STAGES-1 straight into shared memory while slice t is
//            multiplied (no registers, no wait until the data is needed);
//   ASYNC=0  two buffers; slice t+1 is loaded into registers while slice t is multiplied,
//            then stored (one barrier per slice).
// Shared memory holds 16-byte chunks; a chunk's place in its row is XOR-swizzled with the
// row number so that the eight rows an ldmatrix (or a warp's fragment loads) touches at one
// column fall into eight different bank groups, without padding.
// Fragments: LDSM=1 loads them with ldmatrix (A, and B in float16 transposed on the fly),
// LDSM=0 with plain 32-/16-bit shared loads (same addresses). TF32 B is always loaded
// with plain loads (ldmatrix.trans moves 16-bit elements only).
// TF32 inputs are rounded to nearest (ties away, as cvt.rna): when stored to shared memory
// (ASYNC=0), or (ASYNC=1: cp.async copies the raw bits) when loaded into fragments (RS=0) or
// in shared memory once landed (RS=1, RS=2: integer operations).
// Options: TC_MODE (32: float32 data, TF32 m16n8k8; 16: float16 data as ushort, m16n8k16,
// float accumulation, float16 result), BM BN BK WM WN STAGES ASYNC LDSM, GM (block rows per
// group of the launch order, so that consecutive work-groups share B slices in L2), RS
// (where TF32 inputs are rounded, below).

#ifndef TC_KERNEL
#define TC_KERNEL __kernel __attribute__((reqd_work_group_size(TC_NTHR, 1, 1))) void
#endif
#ifndef TC_SHARED
#define TC_SHARED __local
#endif
#ifndef TC_BARRIER
#define TC_BARRIER() barrier(CLK_LOCAL_MEM_FENCE)
#endif
#ifndef TC_STORE_F16
#define TC_STORE_F16(v, p, i) vstore_half_rte((v), (i), (__global half*)(p))
#endif
// Stores of C: one element, or an aligned pair (OpenCL vector types; overridden for CUDA).
#if TC_MODE == 32
#ifndef TC_STORE2
#define TC_STORE2(a, b, p, i) (*(__global float2*)((__global float*)(p) + (i)) = (float2)((a), (b)))
#endif
#define TC_STORE1(a, p, i) (((__global float*)(p))[(i)] = (a))
#else
#ifndef TC_STORE2
#define TC_STORE2(a, b, p, i) vstore_half2_rte((float2)((a), (b)), 0, (__global half*)(p) + (i))
#endif
#define TC_STORE1(a, p, i) TC_STORE_F16((a), (p), (i))
#endif
#ifndef TC_UINT4
#define TC_UINT4(a, b, c, d) ((uint4)((a), (b), (c), (d)))
#endif

#if TC_MODE == 32
#define TC_CE 4      /* elements per 16-byte chunk */
#define TC_KS 8      /* k of one mma */
#define TC_ES 4      /* bytes per element */
typedef uint tc_in;  /* float bits */
#elif TC_MODE == 16
#define TC_CE 8
#define TC_KS 16
#define TC_ES 2
typedef ushort tc_in; /* float16 bits */
#else
#error "TC_MODE must be 32 (TF32) or 16 (float16)"
#endif

#define TC_NTHR (WM * WN * 32)
#define TC_MT (BM / WM / 16)            /* mma tiles per warp along M */
#define TC_NT (BN / WN / 8)             /* ... along N */
#define TC_RA (BK / TC_CE)              /* chunks per row of an A slice [BM][BK] */
#define TC_RB (BN / TC_CE)              /* chunks per row of a B slice [BK][BN] */
#define TC_ACH (BM * TC_RA)             /* chunks per A slice */
#define TC_BCH (BK * TC_RB)
#define TC_LA (TC_ACH / TC_NTHR)        /* A chunks each work-item copies per slice */
#define TC_LB (TC_BCH / TC_NTHR)

#if BM % (16 * WM) || BN % (8 * WN) || BK % TC_KS || TC_ACH % TC_NTHR || TC_BCH % TC_NTHR \
    || TC_LA < 1 || TC_LB < 1 || (TC_RA & (TC_RA - 1)) || TC_RB % 8 \
    || (TC_MODE == 16 && TC_NT % 2) || STAGES < 2 || (ASYNC == 0 && STAGES != 2) || GM < 1 || RS < 0 || RS > 2
#error "tc tile parameters: need BM % (16*WM) == 0, BN % (8*WN) == 0, BK a multiple of the mma's k, whole chunks per work-item, BK/chunk a power of two, BN/chunk a multiple of 8, an even number of n-tiles per warp for float16, STAGES >= 2 (exactly 2 without ASYNC), RS 0..2"
#endif

// Swizzled chunk index of (row r, chunk c) in an A slice: over any 8 consecutive rows the
// same c lands in 8 different 16-byte bank groups (rows shorter than 128 bytes share one).
#define TC_SWA(r) (((r) / (TC_RA >= 8 ? 1 : 8 / TC_RA)) % (TC_RA >= 8 ? 8 : TC_RA))
#define TC_AIDX(s, r, c) ((s) * TC_ACH + (r) * TC_RA + ((c) ^ TC_SWA(r)))
// B slices: float16 is read by ldmatrix.trans, 8 consecutive k-rows at one chunk; TF32 by
// plain loads, k-rows t and t+4 (t < 4) at two adjacent chunks: XOR with 2k keeps those
// eight (row, chunk) pairs in different bank groups too.
#if TC_MODE == 16
#define TC_SWB(k) ((k) % 8)
#else
#define TC_SWB(k) ((2 * (k)) % 8)
#endif
#define TC_BIDX(s, k, c) ((s) * TC_BCH + (k) * TC_RB + ((c) ^ TC_SWB(k)))

// Where TF32 inputs are rounded (RS): 0 in the fragments (cvt.rna per register, each
// element once per warp that reads it), 1 in shared memory once a slice has landed (cvt.rna
// per element, once), 2 likewise with integer operations instead of cvt. The register path
// (ASYNC=0) always rounds as it stores to shared memory.
#define TC_ROUND_IN_FRAG (TC_MODE == 32 && ASYNC && RS == 0)
#define TC_ROUND_LANDED (TC_MODE == 32 && ASYNC && RS != 0)
#define TC_ROUND_AT_STORE (TC_MODE == 32 && !ASYNC)
#define TC_CLAMP(x) ((x) < 0 ? 0 : (x) > TC_CE ? TC_CE : (x))
// cp.async.wait_group's operand (STAGES - 2) as a literal.
#if STAGES == 2
#define TC_WAITN 0
#elif STAGES == 3
#define TC_WAITN 1
#elif STAGES == 4
#define TC_WAITN 2
#elif STAGES == 5
#define TC_WAITN 3
#elif ASYNC
#error "tc: STAGES must be 2..5"
#endif

#ifndef TC_FN
#define TC_FN static inline
#endif

// The A fragment of mma tile rows r0..r0+15, k-step ks, in stage s: register j holds
// (row g + 8*(j%2), 32-bit word t of chunk 2*ks + j/2), g = lane/4, t = lane%4; a chunk is
// 16 bytes = one TF32 k-quad or one float16 k-octet, so this is the PTX A layout of both
// m16n8k8.tf32 and m16n8k16.f16. ldmatrix.x4 gives the same registers: lane 8j+i points
// at row i of matrix j.
TC_FN void tc_frag_a(uint* f, __local const uint4* As, int s, int r0, int ks, int lane)
{
#if LDSM
    const int r = r0 + lane % 8 + (lane / 8 % 2) * 8;
    tc_ldsm_x4(f, &As[TC_AIDX(s, r, 2 * ks + lane / 16)]);
#else
    _Pragma("unroll") for (int j = 0; j < 4; ++j) {
        const int r = r0 + lane / 4 + 8 * (j % 2);
        f[j] = ((__local const uint*)As)[TC_AIDX(s, r, 2 * ks + j / 2) * 4 + lane % 4];
    }
#endif
#if TC_ROUND_IN_FRAG
    _Pragma("unroll") for (int j = 0; j < 4; ++j) f[j] = tc_tf32(f[j]);
#endif
}

// The B fragments of the warp's TC_NT n-tiles from column n0, k-step ks, in stage s:
// register h of tile j holds k = 2t + 8h and 2t + 8h + 1 (float16), or k = t + 4h (TF32),
// at column n0 + 8j + g.
TC_FN void tc_frags_b(uint (*bf)[2], __local const uint4* Bs, int s, int n0, int ks, int lane)
{
#if TC_MODE == 16 && LDSM
    // One ldmatrix.x4.trans per two n-tiles: matrices (k 0-7, k 8-15) x (tile 2j, 2j+1).
    _Pragma("unroll") for (int j = 0; j < TC_NT / 2; ++j) {
        uint r[4];
        const int k = ks * 16 + lane % 8 + (lane / 8 % 2) * 8;
        const int n = n0 + j * 16 + lane / 16 * 8;
        tc_ldsm_x4_trans(r, &Bs[TC_BIDX(s, k, n / 8)]);
        bf[2 * j][0] = r[0];
        bf[2 * j][1] = r[1];
        bf[2 * j + 1][0] = r[2];
        bf[2 * j + 1][1] = r[3];
    }
#elif TC_MODE == 16
    const int g = lane / 4, t = lane % 4;
    _Pragma("unroll") for (int j = 0; j < TC_NT; ++j) {
        const int n = n0 + j * 8 + g;
        _Pragma("unroll") for (int h = 0; h < 2; ++h) {
            const int k = ks * 16 + 2 * t + 8 * h;
            __local const ushort* b16 = (__local const ushort*)Bs;
            const uint lo = b16[TC_BIDX(s, k, n / 8) * 8 + n % 8];
            const uint hi = b16[TC_BIDX(s, k + 1, n / 8) * 8 + n % 8];
            bf[j][h] = lo | hi << 16;
        }
    }
#else
    const int g = lane / 4, t = lane % 4;
    _Pragma("unroll") for (int j = 0; j < TC_NT; ++j) {
        const int n = n0 + j * 8 + g;
        _Pragma("unroll") for (int h = 0; h < 2; ++h) {
            const int k = ks * 8 + t + 4 * h;
            bf[j][h] = ((__local const uint*)Bs)[TC_BIDX(s, k, n / 4) * 4 + n % 4];
#if TC_ROUND_IN_FRAG
            bf[j][h] = tc_tf32(bf[j][h]);
#endif
        }
    }
#endif
}

// One 16-byte chunk of `n` valid elements (0..TC_CE) at p, zero-padded (register path).
TC_FN uint4 tc_load_chunk(__global const tc_in* p, int n)
{
    if (n >= TC_CE) return *(__global const uint4*)p;
    uint w[4] = {0, 0, 0, 0};
    for (int e = 0; e < TC_CE; ++e) {
        if (e < n) {
#if TC_MODE == 32
            w[e] = p[e];
#else
            w[e / 2] |= (uint)p[e] << (16 * (e % 2));
#endif
        }
    }
    return TC_UINT4(w[0], w[1], w[2], w[3]);
}

// float bits -> TF32 bits with integer operations: round to nearest, ties away from zero
// (as cvt.rna), NaN kept a NaN (its quiet bit survives the truncation).
TC_FN uint tc_tf32_int(uint x)
{
    return ((x & 0x7fffffffu) > 0x7f800000u ? (x | 0x00400000u) : x + 0x1000u) & 0xffffe000u;
}

#if TC_MODE == 32 && RS == 2
#define TC_RND(x) tc_tf32_int(x)
#else
#define TC_RND(x) tc_tf32(x)
#endif
#define TC_ROUND4(v) TC_UINT4(TC_RND((v).x), TC_RND((v).y), TC_RND((v).z), TC_RND((v).w))
#if TC_ROUND_AT_STORE
#define TC_STORED(v) TC_ROUND4(v)
#else
#define TC_STORED(v) (v)
#endif

TC_KERNEL gemm_tc(__global tc_in* restrict C, __global const tc_in* restrict A, const long a_off,
                  __global const tc_in* restrict B, const long b_off, const int M, const int N, const int K,
                  const long lda, const long ldb, const int n1, const int n2,
                  const long pa0, const long pa1, const long pa2,
                  const long pb0, const long pb1, const long pb2)
{
    TC_SHARED uint4 As[STAGES * TC_ACH];
    TC_SHARED uint4 Bs[STAGES * TC_BCH];

    const int tid = (int)get_local_id(0), lane = tid % 32, warp = tid / 32;

    // Launch order -> tile: GM block rows at a time sweep the block columns.
    const int gn = (int)get_num_groups(0), gm = (int)get_num_groups(1);
    const int lin = (int)get_group_id(1) * gn + (int)get_group_id(0);
    const int first = lin / (GM * gn) * GM;
    const int rows = gm - first < GM ? gm - first : GM;
    const int bm0 = (first + (lin % (GM * gn)) % rows) * BM;
    const int bn0 = (lin % (GM * gn)) / rows * BN;

    const int bt = (int)get_group_id(2);
    const int i2 = bt % n2, i1 = (bt / n2) % n1, i0 = bt / (n1 * n2);
    A += a_off + i0 * pa0 + i1 * pa1 + i2 * pa2;
    B += b_off + i0 * pb0 + i1 * pb1 + i2 * pb2;
    C += (size_t)bt * M * N;

    const int wm0 = warp / WN * (BM / WM), wn0 = warp % WN * (BN / WN);
    float acc[TC_MT][TC_NT][4];
    _Pragma("unroll") for (int i = 0; i < TC_MT; ++i)
        _Pragma("unroll") for (int j = 0; j < TC_NT; ++j)
            _Pragma("unroll") for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // This work-item's chunks of each slice: A chunk (row ar, column ac), B chunk (k-row bk,
    // column bc); the global column bound of each is fixed, the k bound moves with the slice.
    int ar[TC_LA], ac[TC_LA], bk[TC_LB], bc[TC_LB], bn_left[TC_LB];
    _Pragma("unroll") for (int j = 0; j < TC_LA; ++j) {
        const int i = tid + j * TC_NTHR;
        ar[j] = i / TC_RA;
        ac[j] = i % TC_RA;
    }
    _Pragma("unroll") for (int j = 0; j < TC_LB; ++j) {
        const int i = tid + j * TC_NTHR;
        bk[j] = i / TC_RB;
        bc[j] = i % TC_RB;
        bn_left[j] = N - (bn0 + bc[j] * TC_CE);  // valid elements from this chunk's start
    }
    const int KT = (K + BK - 1) / BK;

// Elements of A chunk j / B chunk j of slice kt that lie inside the matrices (0..TC_CE).
#define TC_A_VALID(j, kt) (bm0 + ar[j] < M ? TC_CLAMP(K - ((kt) * BK + ac[j] * TC_CE)) : 0)
#define TC_B_VALID(j, kt) ((kt) * BK + bk[j] < K ? TC_CLAMP(bn_left[j]) : 0)
#define TC_A_SRC(j, kt) (A + (long)(bm0 + ar[j]) * lda + (kt) * BK + ac[j] * TC_CE)
#define TC_B_SRC(j, kt) (B + (long)((kt) * BK + bk[j]) * ldb + bn0 + bc[j] * TC_CE)

#if ASYNC
#define TC_LOAD_SLICE(s, kt)                                                             \
    do {                                                                                 \
        _Pragma("unroll") for (int j = 0; j < TC_LA; ++j) {                              \
            const int n_ = TC_A_VALID(j, kt);                                            \
            tc_cp_async16(&As[TC_AIDX(s, ar[j], ac[j])], n_ ? TC_A_SRC(j, kt) : A, n_ * TC_ES); \
        }                                                                                \
        _Pragma("unroll") for (int j = 0; j < TC_LB; ++j) {                              \
            const int n_ = TC_B_VALID(j, kt);                                            \
            tc_cp_async16(&Bs[TC_BIDX(s, bk[j], bc[j])], n_ ? TC_B_SRC(j, kt) : B, n_ * TC_ES); \
        }                                                                                \
    } while (0)
#else
    uint4 ra[TC_LA], rb[TC_LB];
#define TC_FETCH(kt)                                                                     \
    do {                                                                                 \
        _Pragma("unroll") for (int j = 0; j < TC_LA; ++j) {                              \
            const int n_ = TC_A_VALID(j, kt);                                            \
            ra[j] = n_ ? tc_load_chunk(TC_A_SRC(j, kt), n_) : TC_UINT4(0, 0, 0, 0);      \
        }                                                                                \
        _Pragma("unroll") for (int j = 0; j < TC_LB; ++j) {                              \
            const int n_ = TC_B_VALID(j, kt);                                            \
            rb[j] = n_ ? tc_load_chunk(TC_B_SRC(j, kt), n_) : TC_UINT4(0, 0, 0, 0);      \
        }                                                                                \
    } while (0)
#define TC_STORE(s)                                                                      \
    do {                                                                                 \
        _Pragma("unroll") for (int j = 0; j < TC_LA; ++j)                                \
            As[TC_AIDX(s, ar[j], ac[j])] = TC_STORED(ra[j]);                              \
        _Pragma("unroll") for (int j = 0; j < TC_LB; ++j)                                \
            Bs[TC_BIDX(s, bk[j], bc[j])] = TC_STORED(rb[j]);                              \
    } while (0)
#endif

    // The mma work of one slice in stage s: BK / TC_KS steps, each loading the warp's A and
    // B fragments and issuing TC_MT x TC_NT mma.
#define TC_COMPUTE(s)                                                                    \
    _Pragma("unroll") for (int ks = 0; ks < BK / TC_KS; ++ks) {                          \
        uint af[TC_MT][4], bf[TC_NT][2];                                                 \
        _Pragma("unroll") for (int i = 0; i < TC_MT; ++i) tc_frag_a(af[i], As, s, wm0 + i * 16, ks, lane); \
        tc_frags_b(bf, Bs, s, wn0, ks, lane);                                            \
        _Pragma("unroll") for (int i = 0; i < TC_MT; ++i)                                \
            _Pragma("unroll") for (int j = 0; j < TC_NT; ++j) tc_mma(acc[i][j], af[i], bf[j]); \
    }

#if ASYNC
    _Pragma("unroll") for (int s = 0; s < STAGES - 1; ++s) {
        if (s < KT) TC_LOAD_SLICE(s, s);
        tc_cp_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        TC_CP_WAIT(TC_WAITN);    // slice kt has landed (this work-item's part) ...
#if TC_ROUND_LANDED
        {   // ... round this work-item's part of it to TF32 in place ...
            const int s = kt % STAGES;
            _Pragma("unroll") for (int j = 0; j < TC_LA; ++j)
                As[TC_AIDX(s, ar[j], ac[j])] = TC_ROUND4(As[TC_AIDX(s, ar[j], ac[j])]);
            _Pragma("unroll") for (int j = 0; j < TC_LB; ++j)
                Bs[TC_BIDX(s, bk[j], bc[j])] = TC_ROUND4(Bs[TC_BIDX(s, bk[j], bc[j])]);
        }
#endif
        TC_BARRIER();            // ... everyone's, and stage (kt-1) % STAGES is free again
        const int nk = kt + STAGES - 1;
        if (nk < KT) TC_LOAD_SLICE(nk % STAGES, nk);
        tc_cp_commit();          // (an empty group at the end keeps the count uniform)
        const int s = kt % STAGES;
        TC_COMPUTE(s)
    }
#else
    if (KT > 0) {
        TC_FETCH(0);
        TC_STORE(0);
    }
    TC_BARRIER();
    for (int kt = 0; kt < KT; ++kt) {
        if (kt + 1 < KT) TC_FETCH(kt + 1);
        const int s = kt % 2;
        TC_COMPUTE(s)
        if (kt + 1 < KT) TC_STORE(1 - s);
        TC_BARRIER();
    }
#endif

    // Accumulator (i, j, e) of this lane is C[row g + 8*(e/2)][col 2t + e%2] of mma tile (i, j):
    // two neighbours of a row, stored as one 8-byte (float) or 4-byte (float16) word where
    // both lie inside C and the row length keeps the pair aligned (N even).
    const int g = lane / 4, t = lane % 4;
    _Pragma("unroll") for (int i = 0; i < TC_MT; ++i) {
        _Pragma("unroll") for (int h = 0; h < 2; ++h) {
            const int m = bm0 + wm0 + i * 16 + g + 8 * h;
            if (m < M) {
                _Pragma("unroll") for (int j = 0; j < TC_NT; ++j) {
                    const int n = bn0 + wn0 + j * 8 + 2 * t;
                    const size_t o = (size_t)m * N + n;
                    const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                    if (n + 1 < N && N % 2 == 0) {
                        TC_STORE2(v0, v1, C, o);
                    } else {
                        if (n < N) TC_STORE1(v0, C, o);
                        if (n + 1 < N) TC_STORE1(v1, C, o + 1);
                    }
                }
            }
        }
    }
}
